"""Per-sequence KV storage: each sequence owns its keys and values for every decoder layer.

A sequence's keys and values live in one row of a `KVBlock`, a tensor shared with the other
sequences of the batch it last ran in. While a batch keeps the same sequences, in the same
order, attention reads the block directly and each step only writes the new rows. When the
composition changes, `gather` copies each sequence's committed tokens into a new block for the
new batch; the sequences left behind in a source block move to a block of their own, so a
block is never kept alive by a few of its rows.

Only committed tokens are part of a sequence's cache (`SequenceKV.num_tokens`): rows that a
forward pass writes past them belong to that pass until it commits, so a pass preempted
between layers leaves every sequence consistent.
"""

from __future__ import annotations

import math
import weakref

import torch

CAPACITY_GROWTH = 1.5  # block capacity as a multiple of the tokens it must hold: amortized appends
MIN_CAPACITY = 16  # tokens


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Keys and values of one token across every decoder layer."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.empty((), dtype=dtype).element_size()
    return config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * element


def capacity_for(num_tokens: int) -> int:
    """Token capacity of a new block whose longest sequence needs `num_tokens`."""
    return max(MIN_CAPACITY, math.ceil(num_tokens * CAPACITY_GROWTH))


class KVBlock:
    """Keys and values of a group of sequences, one row each, for every decoder layer."""

    def __init__(self, num_layers: int, num_rows: int, capacity: int, like: torch.Tensor) -> None:
        _, kv_heads, _, head_dim = like.shape  # like: [batch, kv_heads, query, head_dim]
        # storage: [num_layers, 2 (keys, values), num_rows, kv_heads, capacity, head_dim]; left
        # uninitialized: `_move` fills every slot (committed tokens copied in, the rest zeroed)
        self.storage = torch.empty(
            num_layers, 2, num_rows, kv_heads, capacity, head_dim, dtype=like.dtype, device=like.device
        )
        self.owners: list[weakref.ref[SequenceKV]] = []  # row -> the sequence stored there

    @property
    def num_rows(self) -> int:
        return self.storage.shape[2]

    @property
    def capacity(self) -> int:
        return self.storage.shape[4]

    def live_owners(self) -> list[SequenceKV]:
        """The sequences still stored here, in row order (moved and freed ones excluded)."""
        owners = (ref() for ref in self.owners)
        return [kv for kv in owners if kv is not None and kv.block is self]


class SequenceKV:
    """One sequence's KV cache: where its rows are, and how many tokens are committed."""

    def __init__(self) -> None:
        self.num_tokens = 0  # committed tokens: every layer holds their keys and values
        self.block: KVBlock | None = None  # storage holding this sequence's row; None before its first pass
        self.row = 0  # this sequence's row in `block`
        self.is_in_flight = False  # part of a forward pass that has neither committed nor been abandoned

    def keys(self, layer: int) -> torch.Tensor:
        """Committed keys of `layer`: [kv_heads, num_tokens, head_dim] (a view, not a copy)."""
        return self._committed(layer, 0)

    def values(self, layer: int) -> torch.Tensor:
        """Committed values of `layer`: [kv_heads, num_tokens, head_dim] (a view, not a copy)."""
        return self._committed(layer, 1)

    def free(self) -> None:
        """Drop this sequence's cache (it finished); its row is reclaimed with its block."""
        if self.is_in_flight:
            raise RuntimeError("cannot free the KV cache of a sequence in an unfinished forward pass")
        self.block, self.row, self.num_tokens = None, 0, 0

    def _committed(self, layer: int, kind: int) -> torch.Tensor:
        if self.block is None:
            raise ValueError("this sequence has no KV cache yet: no forward pass has committed")
        return self.block.storage[layer, kind, self.row, :, : self.num_tokens]


def gather(kvs: list[SequenceKV], num_layers: int, capacity: int, like: torch.Tensor) -> KVBlock:
    """A new block holding `kvs` in order, each sequence's committed tokens copied in.

    Sequences left behind in the blocks the others came from move to a block of their own.
    """
    sources = _move(kvs, num_layers, capacity, like)
    for source in sources:
        left_behind = source.live_owners()
        if left_behind:
            longest = max(kv.num_tokens for kv in left_behind)
            _move(left_behind, num_layers, capacity_for(longest), like)
    return kvs[0].block


def _move(kvs: list[SequenceKV], num_layers: int, capacity: int, like: torch.Tensor) -> list[KVBlock]:
    """Copy `kvs` into a new block, row i for kvs[i]; returns the blocks they came from."""
    block = KVBlock(num_layers, len(kvs), capacity, like)
    # Slots past a row's tokens are read under the mask, and 0 * NaN is NaN: they must hold finite values.
    block.storage[:, :, :, :, min(kv.num_tokens for kv in kvs) :].zero_()
    for new_row, kv in enumerate(kvs):
        if kv.block is not None and kv.num_tokens > 0:
            # One strided copy per sequence, every layer at once: [num_layers, 2, kv_heads, num_tokens, head_dim]
            committed = kv.block.storage[:, :, kv.row, :, : kv.num_tokens]
            block.storage[:, :, new_row, :, : kv.num_tokens].copy_(committed)
    sources = list(dict.fromkeys(kv.block for kv in kvs if kv.block is not None))
    for new_row, kv in enumerate(kvs):
        kv.block, kv.row = block, new_row
    block.owners = [weakref.ref(kv) for kv in kvs]
    return sources
