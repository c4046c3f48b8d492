"""grouped_mm's algorithm with the GEMMs left to the caller: what the `onednn` and `nf4` experts
implementations share. The (token, slot) pairs are taken in expert order, each expert runs once on
its rows, and each pair's output, weighted, goes back to its place and is summed over the slots in
the product's dtype, then cast to the input's."""

from __future__ import annotations

from collections.abc import Callable

import torch


def grouped_by_expert(
    hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, order: torch.Tensor,
    counts: list[int], run_expert: Callable[[torch.Tensor, int], torch.Tensor],
) -> torch.Tensor:  # fmt: skip
    """hidden_states [tokens, hidden], top_k_index / top_k_weights [tokens, k] -> [tokens, hidden].
    `order` sorts the flattened pairs by expert, `counts[e]` of them go to expert e, and
    `run_expert(rows [m, hidden], e)` -> [m, hidden] is expert e's gated MLP, unweighted."""
    num_tokens, top_k = top_k_index.shape
    selected = hidden_states[order // top_k]  # [tokens * k, hidden], grouped by expert
    outputs, start = [], 0
    for expert, count in enumerate(counts):
        if count:
            outputs.append(run_expert(selected[start : start + count], expert))
            start += count
    expert_out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]  # [tokens * k, hidden], grouped
    weights = top_k_weights.reshape(-1)[order, None]  # [tokens * k, 1]
    weighted = expert_out.new_empty(expert_out.shape, dtype=torch.result_type(expert_out, weights))
    weighted[order] = expert_out * weights  # back to (token, slot) order
    return weighted.view(num_tokens, top_k, -1).sum(dim=1).to(hidden_states.dtype)
