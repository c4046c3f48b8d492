"""UnifiedDynamicCache: one batched KV tensor per layer for the model, per-sequence caches underneath.

The model's own attention modules call `update()` as they would on Hugging Face's
`DynamicCache`. Each sequence of the batch feeds its uncached tokens, right-padded to the
longest; `update()` writes each sequence's real new keys and values into that sequence's own
blocks (`qllm.kv`) and returns the batch view [batch, kv_heads, key_length, head_dim] that the
attention reads, gathered from the block tables, together with `attention_mask()`, which hides
each row's padded slots.

One cache serves one forward pass. Its sequences take the blocks the pass will write when the
cache is made; written slots become part of each sequence's cache only at `commit()`, after every
layer has written them.
"""

from __future__ import annotations

import torch
from transformers import Cache

from qllm.kv import PADDING_BLOCK, KVPool, SequenceKV


class UnifiedDynamicCache(Cache):
    """The KV cache of one forward pass over a batch: row b is `kvs[b]`, feeding `num_new_tokens[b]` tokens."""

    def __init__(self, kvs: list[SequenceKV], num_new_tokens: list[int], num_layers: int) -> None:
        super().__init__(layers=[])  # the per-layer state lives in the pool's blocks, not in Cache.layers
        _check_batch(kvs, num_new_tokens)
        self.kvs = kvs
        self.pool: KVPool = kvs[0].pool
        self.num_layers = num_layers
        self.num_cached_tokens = [kv.num_tokens for kv in kvs]  # committed tokens per sequence
        self.num_new_tokens = list(num_new_tokens)  # tokens this pass feeds per sequence
        self.query_length = max(num_new_tokens)  # padded query length
        self.key_length = max(c + n for c, n in zip(self.num_cached_tokens, num_new_tokens))  # batch view length
        for kv, cached, num_new in zip(kvs, self.num_cached_tokens, num_new_tokens):
            kv.reserve(cached + num_new)
            kv.is_in_flight = True
        self.layers_written: set[int] = set()
        self.is_done = False  # committed or abandoned
        self._gather_index: torch.Tensor | None = None  # [batch * blocks per row]: the block tables, padded
        self._write_index: torch.Tensor | None = None  # [num_real_tokens]: the pool slot of each real new token
        self._real_tokens: tuple[torch.Tensor, torch.Tensor] = ()  # (row, query slot) of each real new token

    def held_tensors(self) -> list[torch.Tensor]:
        """The pass's index tensors (block tables, write slots), once a layer has written: the cache's
        own state; its keys and values live in the pool's blocks."""
        return [t for t in (self._gather_index, self._write_index, *self._real_tokens) if t is not None]

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
        Returns keys, values: [batch, kv_heads, key_length, head_dim], gathered from the blocks.
        """
        if self.is_done:
            raise RuntimeError("this forward pass already committed or was abandoned; start a new one")
        if self._gather_index is None:
            self._prepare_indices(key_states.device)
        keys, values = (self._write_and_gather(storage[layer_idx], new)
                        for storage, new in zip(self.pool.storage, (key_states, value_states)))  # fmt: skip
        self.layers_written.add(layer_idx)
        return keys, values

    def _write_and_gather(self, storage: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Write one layer's new keys (or values) [batch, heads, query, dim] into `storage`
        [pool blocks, block_size, heads, dim]; return the batch view [batch, heads, key_length, dim]."""
        slots = storage.view(-1, *storage.shape[2:])  # [pool slots, heads, dim]
        slots.index_copy_(0, self._write_index, self._new_tokens(states))
        gathered = storage.index_select(0, self._gather_index)  # [batch * blocks per row, block_size, heads, dim]
        per_row = gathered.view(self.batch_size, -1, *storage.shape[2:])[:, : self.key_length]
        return per_row.transpose(1, 2)

    def commit(self) -> None:
        """Every layer has written the new tokens: they join each sequence's cache."""
        missing = set(range(self.num_layers)) - self.layers_written
        if missing:
            raise RuntimeError(f"cannot commit: layers {sorted(missing)} have not written this pass's keys")
        for kv, num_new in zip(self.kvs, self.num_new_tokens):
            kv.num_tokens += num_new
        self.release()

    def release(self) -> None:
        """End the pass; without a commit its written slots are simply never used (a later pass overwrites them)."""
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

    def _new_tokens(self, states: torch.Tensor) -> torch.Tensor:
        """The real new tokens' keys (or values): [num_real_tokens, heads, dim]."""
        if self.query_length == 1:  # decode: one token per row, no padding
            return states[:, :, 0]
        rows, query_slots = self._real_tokens
        return states[rows, :, query_slots]

    def _prepare_indices(self, device: torch.device) -> None:
        width = self.pool.blocks_for(self.key_length)
        tables = [kv.blocks[:width] + [PADDING_BLOCK] * (width - min(width, len(kv.blocks))) for kv in self.kvs]
        self._gather_index = torch.tensor(tables, device=device).flatten()
        slots, rows, query_slots = [], [], []
        for row, (kv, cached, num_new) in enumerate(zip(self.kvs, self.num_cached_tokens, self.num_new_tokens)):
            slots += kv.slots(cached, cached + num_new)
            rows += [row] * num_new
            query_slots += range(num_new)
        self._write_index = torch.tensor(slots, device=device)
        self._real_tokens = (torch.tensor(rows, device=device), torch.tensor(query_slots, device=device))


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
    if len({id(kv.pool) for kv in kvs}) != 1:
        raise ValueError("the sequences of a batch must share one KV pool")
