"""Paged KV storage: every sequence's keys and values in fixed-size blocks from one pool.

A `KVPool` hands out blocks of `block_size` token slots; a block holds those tokens' keys and
values for every decoder layer. A sequence's `SequenceKV` lists its blocks in order (its block
table) and counts its committed tokens. Blocks are taken as a sequence grows and go back to the
pool when it finishes, so the KV held is each live sequence's tokens rounded up to a block.

`BlockPool` is the bookkeeping alone (which blocks are free, what the used ones weigh); `KVPool`
adds the tensor. A forward pass gathers each layer's batch view from the block tables and writes
its new tokens in place (qllm.real.unified_cache). Only committed tokens are part of a sequence's cache
(`SequenceKV.num_tokens`): slots a pass writes past them belong to that pass until it commits,
so a pass preempted between layers leaves every sequence consistent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qllm.errors import ConfigurationError

PADDING_BLOCK = 0  # never handed out: pads short block tables; zeros, so masked reads stay finite
GROWTH = 1.25  # the pool's capacity grows by this factor when it runs out of free blocks


@dataclass(frozen=True)
class KVShape:
    """What every decoder layer's attention writes to its cache per token: keys [key_heads, key_dim] and
    values [value_heads, value_dim]. They differ where attention caches a latent (DeepSeek's
    multi-head latent attention caches its compressed KV as the keys and the rotary part as the values)."""

    num_layers: int
    key_heads: int
    key_dim: int
    value_heads: int
    value_dim: int

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        """Keys and values of one token across every decoder layer."""
        element = torch.empty((), dtype=dtype).element_size()
        return self.num_layers * (self.key_heads * self.key_dim + self.value_heads * self.value_dim) * element


class BlockPool:
    """Which blocks are free and which are handed out; block 0 is the padding block."""

    def __init__(self, block_size: int, bytes_per_token: int) -> None:
        if block_size < 1:
            raise ConfigurationError(f"kv_block_size must be >= 1 token; got {block_size}")
        self.block_size = block_size
        self.bytes_per_token = bytes_per_token
        self.block_bytes = block_size * bytes_per_token  # keys and values of a block's tokens, every layer
        self.capacity = 1  # blocks, the padding block included
        self.free_blocks: list[int] = []
        self.num_used = 0
        self.num_tokens = 0  # token slots the sequences use: committed, or written by their pass in flight

    @property
    def used_bytes(self) -> int:
        """KV storage handed out to sequences."""
        return self.num_used * self.block_bytes

    @property
    def needed_bytes(self) -> int:
        """KV of the tokens stored: what storage without any rounding would hold."""
        return self.num_tokens * self.bytes_per_token

    def blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def allocate(self) -> int:
        if not self.free_blocks:
            self._grow(max(self.capacity + 1, math.ceil(self.capacity * GROWTH)))
        self.num_used += 1
        return self.free_blocks.pop()

    def release(self, blocks: list[int]) -> None:
        self.free_blocks.extend(reversed(blocks))
        self.num_used -= len(blocks)

    def _grow(self, capacity: int) -> None:
        self.free_blocks = list(range(capacity - 1, self.capacity - 1, -1)) + self.free_blocks
        self.capacity = capacity


class KVPool(BlockPool):
    """Blocks backed by two tensors, keys [num_layers, capacity, block_size, key_heads, key_dim] and
    values [num_layers, capacity, block_size, value_heads, value_dim] (`storage`, in that order)."""

    def __init__(self, shape: KVShape, dtype: torch.dtype, device: torch.device | str, block_size: int = 16) -> None:
        super().__init__(block_size, shape.bytes_per_token(dtype))
        self.storage = (
            torch.zeros(shape.num_layers, 1, block_size, shape.key_heads, shape.key_dim, dtype=dtype, device=device),
            torch.zeros(shape.num_layers, 1, block_size, shape.value_heads, shape.value_dim, dtype=dtype, device=device),
        )

    def layer(self, layer: int, kind: int) -> torch.Tensor:
        """Keys (kind 0) or values (1) of one layer, every slot: [capacity * block_size, heads, dim] (a view)."""
        storage = self.storage[kind][layer]
        return storage.view(-1, *storage.shape[2:])

    def _grow(self, capacity: int) -> None:
        # Fresh slots are zeros: a masked read of a slot never written must not be NaN (0 * NaN is NaN).
        self.storage = tuple(self._grown(storage, capacity) for storage in self.storage)
        super()._grow(capacity)

    def _grown(self, storage: torch.Tensor, capacity: int) -> torch.Tensor:
        grown = storage.new_zeros(storage.shape[:1] + (capacity,) + storage.shape[2:])
        grown[:, : self.capacity] = storage
        return grown


class SequenceKV:
    """One sequence's KV cache: its blocks in order, and how many of its tokens are committed."""

    def __init__(self, pool: BlockPool) -> None:
        self.pool = pool
        self.blocks: list[int] = []  # the block table: token t lives in blocks[t // block_size]
        self.num_tokens = 0  # committed tokens: every layer holds their keys and values
        self.num_in_use = 0  # token slots in use: committed, or written by the pass in flight
        self.is_in_flight = False  # part of a forward pass that has neither committed nor been abandoned

    @property
    def num_slots(self) -> int:
        return len(self.blocks) * self.pool.block_size

    def reserve(self, num_tokens: int) -> None:
        """Make room for `num_tokens` tokens, taking blocks as needed."""
        while self.num_slots < num_tokens:
            self.blocks.append(self.pool.allocate())
        if num_tokens > self.num_in_use:
            self.pool.num_tokens += num_tokens - self.num_in_use
            self.num_in_use = num_tokens

    def free(self) -> None:
        """Give every block back (the sequence finished or was abandoned)."""
        if self.is_in_flight:
            raise RuntimeError("cannot free the KV cache of a sequence in an unfinished forward pass")
        self.pool.release(self.blocks)
        self.pool.num_tokens -= self.num_in_use
        self.blocks, self.num_tokens, self.num_in_use = [], 0, 0

    def slots(self, start: int, stop: int) -> list[int]:
        """Pool slot indices of tokens start..stop-1 (see `KVPool.layer`)."""
        size = self.pool.block_size
        return [self.blocks[t // size] * size + t % size for t in range(start, stop)]

    def keys(self, layer: int) -> torch.Tensor:
        """Committed keys of `layer`: [kv_heads, num_tokens, head_dim] (a copy)."""
        return self._committed(layer, 0)

    def values(self, layer: int) -> torch.Tensor:
        """Committed values of `layer`: [kv_heads, num_tokens, head_dim] (a copy)."""
        return self._committed(layer, 1)

    def _committed(self, layer: int, kind: int) -> torch.Tensor:
        slots = torch.tensor(self.slots(0, self.num_tokens), dtype=torch.long)
        return self.pool.layer(layer, kind)[slots].transpose(0, 1)
