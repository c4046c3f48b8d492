"""One MoE block run expert by expert, from the block's own router and experts modules.

`ExpertByExpert` routes the tokens with the block's router, called as is, then runs one expert
at a time: the block's own experts module is called on the tokens routed to that expert alone,
so whichever experts implementation the model uses (eager, grouped_mm, batched_mm, onednn), its weight
layout, biases and gating run unchanged. The weighted outputs accumulate in the object (the
partial sums a preempted pass keeps); a shared expert, where the family has one, is one more
unit, numbered `num_experts`.

Each expert is called with routing weight 1 (its output then leaves the module unrounded by the
weighting), weighted here in the dtype the experts module forms that product in (float32 when
the router's weights are float32), and summed the way the implementation sums: `eager` adds
into a running sum in ascending expert order; `grouped_mm`, `batched_mm` and `onednn`
(qllm.kernels) keep one weighted output per (token, top-k slot), sum over the slots at the end,
then cast to the model dtype.

Against the block's own forward (tests/test_moe.py): bit-identical for `eager`, `grouped_mm`
(transformers' CPU default) and `onednn` in float32 and bfloat16; `batched_mm` is bit-identical in bfloat16 but in
float32 differs in the last bits, within the test's tolerance (bmm picks its kernel by batch
count, and one expert's rows are a smaller batch than all tokens' rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MoeParts:
    """Where a family's MoE block keeps what `ExpertByExpert` runs: the block's modules, held."""

    router: nn.Module  # tokens [tokens, hidden] -> (logits [tokens, experts], weights [tokens, k], index [tokens, k])
    experts: nn.Module  # (tokens [m, hidden], index [m, j], weights [m, j]) -> weighted sum over the j [m, hidden]
    num_experts: int  # routed experts; the shared expert, if any, is unit `num_experts`
    shared: Callable[[torch.Tensor], torch.Tensor] | None = None  # tokens [tokens, hidden] -> [tokens, hidden]
    route: Callable[[torch.Tensor], tuple] | None = None  # how the block calls `router`, where not router(tokens)


def sums_in_expert_order(experts: nn.Module) -> bool:
    """True when the experts module adds expert outputs into a running sum (the `eager` loop).
    Read once per block run: the implementation must not change while a pass is suspended in it."""
    config = getattr(experts, "config", None)
    return getattr(config, "_experts_implementation", None) == "eager"


class ExpertByExpert:
    """The forward of one MoE block over `tokens`, run unit by unit (a routed expert, or the shared one)."""

    @torch.no_grad()
    def __init__(self, parts: MoeParts, tokens: torch.Tensor) -> None:
        self.parts = parts
        self.tokens = tokens  # [tokens, hidden]
        _, self.weights, self.index = (parts.route or parts.router)(tokens)  # each [tokens, k]
        self.in_expert_order = sums_in_expert_order(parts.experts)
        num_tokens, top_k = self.index.shape
        if self.in_expert_order:  # like eager: one running sum in the model dtype
            self.routed = torch.zeros_like(tokens)  # [tokens, hidden]
        else:  # like grouped_mm / batched_mm: one weighted output per (token, slot), in the product's dtype
            dtype = torch.result_type(tokens, self.weights)
            self.routed = torch.zeros(num_tokens, top_k, tokens.shape[-1], dtype=dtype, device=tokens.device)
        self.shared_output: torch.Tensor | None = None  # [tokens, hidden] once the shared unit ran
        hit = torch.unique(self.index).tolist()  # ascending: the experts that received tokens
        self.units: list[int] = hit + ([parts.num_experts] if parts.shared is not None else [])
        self.num_done = 0  # units run so far, in `units` order

    def groups(self, size: int) -> list[list[int]]:
        """The units in runs of `size`: one checkpoint after each run."""
        return [self.units[i : i + size] for i in range(0, len(self.units), size)]

    @torch.no_grad()
    def run(self, unit: int) -> None:
        """Add one unit's weighted output to the partial sums; units run once each, in `units` order."""
        if unit != self.units[self.num_done]:
            raise RuntimeError(f"MoE units run in order {self.units}; expected {self.units[self.num_done]}, got {unit}")
        self.num_done += 1
        if unit == self.parts.num_experts:
            self.shared_output = self.parts.shared(self.tokens)
            return
        rows, slots = torch.where(self.index == unit)  # [m] each, ascending (token, slot)
        index, weights = self.index[rows, slots, None], self.weights[rows, slots, None]  # [m, 1] each
        output = self.parts.experts(self.tokens[rows], index, torch.ones_like(weights))  # [m, hidden], unweighted
        weighted = output * weights  # [m, hidden]: the product the experts module forms, in its dtype
        if self.in_expert_order:
            self.routed.index_add_(0, rows, weighted.to(self.routed.dtype))
        else:
            self.routed[rows, slots] = weighted

    @torch.no_grad()
    def output(self) -> torch.Tensor:
        """The block's output [tokens, hidden], once every unit ran."""
        if self.num_done != len(self.units):
            raise RuntimeError(f"{len(self.units) - self.num_done} MoE units have not run yet")
        routed = self.routed if self.in_expert_order else self.routed.sum(dim=1).to(self.tokens.dtype)
        return routed if self.shared_output is None else routed + self.shared_output
