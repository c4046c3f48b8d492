"""Rotary position embeddings for a batch whose sequences may need different ropes.

Hugging Face's rotary modules compute one rope for a whole batch. Where its scaling depends on
the sequence length (dynamic NTK, and longrope as in PhiMoE, both chosen by the largest position
in the call), a short sequence batched with a long one would get the long one's rope, not the one
`generate` gives it alone. Those rope types are computed one sequence at a time, each from the
module's original frequencies, as a fresh model would.
"""

from __future__ import annotations

import torch
from torch import nn


def depends_on_length(rotary_emb: nn.Module) -> bool:
    """The module's rope changes with the longest position it is called with."""
    rope_type = getattr(rotary_emb, "rope_type", "default")
    return "dynamic" in rope_type or rope_type == "longrope"


def position_embeddings(
    rotary_emb: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [batch, query, head_dim], as each sequence would get them alone.

    hidden: [batch, query, hidden]; position_ids: [batch, query] (padded slots repeat a row's last
    real position, so a row's largest position is its own).
    """
    if not depends_on_length(rotary_emb):
        return rotary_emb(hidden, position_ids=position_ids)
    rows = [_alone(rotary_emb, hidden[row : row + 1], position_ids[row : row + 1]) for row in range(len(hidden))]
    return torch.cat([cos for cos, _ in rows]), torch.cat([sin for _, sin in rows])


def _alone(rotary_emb: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor):
    """One sequence's rope from the module's original state: dynamic NTK otherwise keeps the
    frequencies of the longest sequence it has seen (transformers' dynamic_rope_update)."""
    if hasattr(rotary_emb, "original_inv_freq") and hasattr(rotary_emb, "original_max_seq_len"):
        rotary_emb.inv_freq = rotary_emb.original_inv_freq.clone()
        rotary_emb.max_seq_len_cached = rotary_emb.original_max_seq_len
    return rotary_emb(hidden, position_ids=position_ids)
