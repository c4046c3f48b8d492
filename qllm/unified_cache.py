"""UnifiedDynamicCache: one batched KV tensor per layer for the model, per-sequence caches underneath.

The model's own attention modules call `update()` as they would on Hugging Face's
`DynamicCache`. Each sequence of the batch feeds its uncached tokens, right-padded to the
longest; `update()` writes each sequence's real new keys and values into that sequence's own
storage (`qllm.kv`) and returns the batch view [batch, kv_heads, key_length, head_dim] that the
attention reads, together with `attention_mask()`, which hides each row's padded slots.

One cache serves one forward pass. It prepares the storage at the first `update()`: when the
batch is exactly the sequences of one block, in order, with room for the new tokens, the block
is used as is (no copy); otherwise the sequences are gathered into a new block. Written rows
become part of each sequence's cache only at `commit()`, after every layer has written them.
"""

from __future__ import annotations

import torch
from transformers import Cache

from qllm.kv import KVBlock, SequenceKV, capacity_for, gather


class UnifiedDynamicCache(Cache):
    """The KV cache of one forward pass over a batch: row b is `kvs[b]`, feeding `num_new_tokens[b]` tokens."""

    def __init__(self, kvs: list[SequenceKV], num_new_tokens: list[int], num_layers: int) -> None:
        super().__init__(layers=[])  # the per-layer state lives in the sequences' blocks, not in Cache.layers
        _check_batch(kvs, num_new_tokens)
        self.kvs = kvs
        self.num_layers = num_layers
        self.num_cached_tokens = [kv.num_tokens for kv in kvs]  # committed tokens per sequence
        self.num_new_tokens = list(num_new_tokens)  # tokens this pass feeds per sequence
        self.query_length = max(num_new_tokens)  # padded query length
        self.key_length = max(c + n for c, n in zip(self.num_cached_tokens, num_new_tokens))  # batch view length
        self.block: KVBlock | None = None  # the storage attention reads; prepared at the first update
        self._write_index: tuple[torch.Tensor, ...] = ()  # (row, query slot, key position) of each real new token
        self.layers_written: set[int] = set()
        self.is_done = False  # committed or abandoned
        for kv in kvs:
            kv.is_in_flight = True

    @property
    def batch_size(self) -> int:
        return len(self.kvs)

    def position_ids(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Absolute position of every query slot: [batch, query_length].

        Slot j of row b is position num_cached + j; padded slots repeat the row's last real position.
        """
        cached = torch.tensor(self.num_cached_tokens, device=device)[:, None]  # [batch, 1]
        last_slot = torch.tensor(self.num_new_tokens, device=device)[:, None] - 1  # [batch, 1]
        slots = torch.arange(self.query_length, device=device)[None, :]  # [1, query_length]
        return cached + torch.minimum(slots, last_slot)

    def attention_mask(self, sliding_window: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean mask [batch, 1, query_length, key_length], True = attend.

        Causal within each sequence's own cached and new keys; padded key slots are never attended;
        a padded query slot attends like its row's last real token, so no row is empty (no NaN).
        """
        query_positions = self.position_ids(device)[:, :, None]  # [batch, query_length, 1]
        key_positions = torch.arange(self.key_length, device=device)[None, None, :]  # [1, 1, key_length]
        mask = key_positions <= query_positions
        if sliding_window is not None:
            mask &= key_positions > query_positions - sliding_window
        return mask[:, None]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys and values; return the batch view the attention reads.

        key_states, value_states: [batch, kv_heads, query_length, head_dim] (padded slots included).
        Returns keys, values: [batch, kv_heads, key_length, head_dim], views of the block.
        """
        if self.is_done:
            raise RuntimeError("this forward pass already committed or was abandoned; start a new one")
        if self.block is None:
            self._prepare(key_states)
        keys, values = self.block.storage[layer_idx]  # each [batch, kv_heads, capacity, head_dim]
        rows, slots, positions = self._write_index
        keys[rows, :, positions] = key_states[rows, :, slots]  # [num_real_tokens, kv_heads, head_dim]
        values[rows, :, positions] = value_states[rows, :, slots]
        self.layers_written.add(layer_idx)
        return keys[:, :, : self.key_length], values[:, :, : self.key_length]

    def commit(self) -> None:
        """Every layer has written the new tokens: they join each sequence's cache."""
        missing = set(range(self.num_layers)) - self.layers_written
        if missing:
            raise RuntimeError(f"cannot commit: layers {sorted(missing)} have not written this pass's keys")
        for kv, num_new in zip(self.kvs, self.num_new_tokens):
            kv.num_tokens += num_new
        self.release()

    def release(self) -> None:
        """End the pass; without a commit its written rows are simply never used (the next pass overwrites them)."""
        if not self.is_done:
            self.is_done = True
            for kv in self.kvs:
                kv.is_in_flight = False

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Key slots of the batch view: the longest sequence, with this pass's tokens once the layer wrote them."""
        if layer_idx in self.layers_written:
            return self.key_length
        return max(self.num_cached_tokens)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(kv_length, kv_offset) of the view `update` returns: the mask's key dimension."""
        return self.key_length, 0

    def get_max_length(self) -> int:
        return -1  # grows without bound, like DynamicCache

    def _prepare(self, like: torch.Tensor) -> None:
        """Use the batch's block as is when it holds exactly this batch with room; gather otherwise."""
        block = self.kvs[0].block
        is_reusable = (
            block is not None
            and block.num_rows == self.batch_size
            and block.capacity >= self.key_length
            and all(kv.block is block and kv.row == row for row, kv in enumerate(self.kvs))
        )
        if not is_reusable:
            block = gather(self.kvs, self.num_layers, capacity_for(self.key_length), like)
        self.block = block
        self._write_index = self._real_token_index(like.device)

    def _real_token_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, query slot, key position) of every real new token: three [num_real_tokens] tensors."""
        rows, slots, positions = [], [], []
        for row, (cached, num_new) in enumerate(zip(self.num_cached_tokens, self.num_new_tokens)):
            rows += [row] * num_new
            slots += range(num_new)
            positions += range(cached, cached + num_new)
        return tuple(torch.tensor(index, device=device) for index in (rows, slots, positions))


def _check_batch(kvs: list[SequenceKV], num_new_tokens: list[int]) -> None:
    if not kvs or len(kvs) != len(num_new_tokens):
        raise ValueError(
            f"a batch needs one or more sequences, each with its new-token count; "
            f"got {len(kvs)} caches and {len(num_new_tokens)} counts"
        )
    if len({id(kv) for kv in kvs}) != len(kvs):
        raise ValueError("a sequence appears twice in the batch")
    if any(kv.is_in_flight for kv in kvs):
        raise ValueError("a sequence of this batch is already in an unfinished (suspended?) forward pass")
    if min(num_new_tokens) < 1:
        raise ValueError(f"every sequence must feed at least one token; got {num_new_tokens}")
