"""How one forward pass lays out its batch: row groups for attention, packed tokens for the MLP.

Attention runs per row group: the batch's decode rows (one new token each) form one group and
its prompt rows another, each right-padded to its own longest row with its own
`UnifiedDynamicCache`, so a decode row is never padded to a prompt's length. The MLP half of a
layer, where an MoE model spends most of a pass, sees only real tokens, packed [tokens, hidden]
across groups: padded slots cost it nothing, and decode and prompt tokens of one mixed pass share
one read of the expert weights (the reason a mixed batch pays; docs/capacity.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qllm.sequence import Sequence
from qllm.real.unified_cache import UnifiedDynamicCache


@dataclass(frozen=True)
class RowGroup:
    """Rows of a pass that attend in one call, and what every layer of the pass reads for them."""

    rows: tuple[int, ...]  # their positions in the batch
    cache: UnifiedDynamicCache
    position_ids: torch.Tensor  # [rows, query]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [rows, query, head_dim]
    attention_masks: tuple[torch.Tensor, ...]  # per layer, [rows, 1, query, key]: bool for sdpa, additive for eager
    real_slots: torch.Tensor | None  # [real tokens]: flat index (row * query + slot) of each; None: no padding

    @property
    def num_tokens(self) -> int:
        return sum(self.cache.num_new_tokens)

    def held_tensors(self) -> list[torch.Tensor]:
        """The tensors the group keeps for the whole pass: its inputs above and its cache's indices."""
        slots = [] if self.real_slots is None else [self.real_slots]
        return [self.position_ids, *self.position_embeddings, *self.attention_masks, *slots, *self.cache.held_tensors()]


def rows_by_phase(batch: list[Sequence]) -> list[tuple[int, ...]]:
    """The batch's rows in groups: decode rows (one new token), then prompt rows; empty groups left out."""
    decode = tuple(row for row, seq in enumerate(batch) if seq.num_new_tokens == 1)
    prompts = tuple(row for row, seq in enumerate(batch) if seq.num_new_tokens > 1)
    return [rows for rows in (decode, prompts) if rows]


def real_slots(cache: UnifiedDynamicCache) -> torch.Tensor | None:
    """Flat indices of the real (unpadded) query slots, row by row; None when no row is padded."""
    query = cache.query_length
    if all(n == query for n in cache.num_new_tokens):
        return None
    return torch.tensor([row * query + slot for row, n in enumerate(cache.num_new_tokens) for slot in range(n)])


def pack(hiddens: list[torch.Tensor], groups: list[RowGroup]) -> torch.Tensor:
    """Each group's real tokens [rows, query, hidden] -> one [tokens, hidden], group after group."""
    flat = [h.reshape(-1, h.shape[-1]) for h in hiddens]
    real = [f if g.real_slots is None else f[g.real_slots] for f, g in zip(flat, groups)]
    return real[0] if len(real) == 1 else torch.cat(real)


def unpack(packed: torch.Tensor, groups: list[RowGroup]) -> list[torch.Tensor]:
    """`pack`'s inverse: [tokens, hidden] -> per group [rows, query, hidden], padded slots zero
    (they are never read: only real tokens are written to the cache or reach the LM head)."""
    hiddens, start = [], 0
    for group in groups:
        tokens = packed[start : start + group.num_tokens]
        start += group.num_tokens
        shape = (len(group.rows), group.cache.query_length, packed.shape[-1])
        if group.real_slots is None:
            hiddens.append(tokens.view(shape))
        else:
            padded = packed.new_zeros(shape[0] * shape[1], shape[2]).index_copy_(0, group.real_slots, tokens)
            hiddens.append(padded.view(shape))
    return hiddens


def last_tokens(hiddens: list[torch.Tensor], groups: list[RowGroup], batch_size: int) -> torch.Tensor:
    """Each row's last real token, in batch order: [batch, hidden]."""
    rows, lasts = [], []
    for hidden, group in zip(hiddens, groups):
        last_slots = torch.tensor(group.cache.num_new_tokens, device=hidden.device) - 1
        lasts.append(hidden[torch.arange(len(group.rows), device=hidden.device), last_slots])
        rows.extend(group.rows)
    stacked = lasts[0] if len(lasts) == 1 else torch.cat(lasts)
    if rows == list(range(batch_size)):
        return stacked
    return stacked[torch.tensor(rows, device=stacked.device).argsort()]
