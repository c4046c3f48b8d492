"""One MoE block run expert by expert, from the block's own router and experts modules.

`ExpertByExpert` routes the tokens with the block's router, called as is, then runs one expert
at a time: the block's own experts module is called on the tokens routed to that expert alone,
so whichever experts implementation the model uses (eager, grouped_mm, batched_mm, onednn, nf4), its weight
layout, biases and gating run unchanged. The weighted outputs accumulate in the object (the
partial sums a preempted pass keeps: `held_tensors`); a shared expert, where the family has one,
is one more unit, numbered `num_experts`. `tokens_per_expert` is the routing's count per expert.

Each expert is called with routing weight 1 (its output then leaves the module unrounded by the
weighting), weighted here in the dtype the experts module forms that product in (float32 when
the router's weights are float32), and summed the way the implementation sums: `eager` adds
into a running sum in ascending expert order; `grouped_mm`, `batched_mm` and `onednn`
(qllm.modeling.kernels) keep one weighted output per (token, top-k slot), sum over the slots at the end,
then cast to the model dtype.

The router's choices are read to the host once per block (which experts run, and their rows as
spans of one sort), so on a GPU a block costs one stream sync; an implementation that accepts
`expert=` (`nf4`) is told each unit's expert instead of reading the index again.

Against the block's own forward (tests/test_moe.py): bit-identical for `eager`, `grouped_mm`
(transformers' CPU default) and `onednn` in float32 and bfloat16; `batched_mm` is bit-identical in bfloat16 but in
float32 differs in the last bits, within the test's tolerance (bmm picks its kernel by batch
count, and one expert's rows are a smaller batch than all tokens' rows).
"""

from __future__ import annotations

import inspect
from itertools import accumulate
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS


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


def expert_counts(flat_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(token, slot) pairs per expert, [num_experts], on the index's device. A scatter-add: unlike
    `bincount` or `unique` it never reads the index back to the host (a stream sync on a GPU)."""
    counts = torch.zeros(num_experts, dtype=torch.long, device=flat_index.device)
    return counts.scatter_add_(0, flat_index, torch.ones_like(flat_index))


def takes_expert(experts: nn.Module) -> bool:
    """True when the experts implementation accepts `expert=` (all rows go to that expert), so that
    it need not read the index back: `nf4` (qllm.modeling.kernels.nf4_experts) does."""
    name = getattr(getattr(experts, "config", None), "_experts_implementation", None)
    function = ALL_EXPERTS_FUNCTIONS.get(name) if name else None
    return function is not None and "expert" in inspect.signature(function).parameters


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
        flat_index = self.index.reshape(-1)
        self.order = torch.argsort(flat_index, stable=True)  # pairs by expert, ascending (token, slot) within
        counts = expert_counts(flat_index, parts.num_experts).tolist()  # the block's one read to the host
        self.tokens_per_expert: list[int] = counts  # tokens routed to each expert (a token's top-k are distinct)
        ends = list(accumulate(counts))
        self.spans = {e: (end - count, end) for e, (count, end) in enumerate(zip(counts, ends)) if count}
        self.hint = takes_expert(parts.experts)
        hit = list(self.spans)  # ascending: the experts that received tokens
        self.units: list[int] = hit + ([parts.num_experts] if parts.shared is not None else [])
        self.num_done = 0  # units run so far, in `units` order

    def held_tensors(self) -> list[torch.Tensor]:
        """What the run keeps between units: its input tokens, the routing (weights, expert index and
        its sort) and the partial sums (and the shared expert's output once it ran)."""
        held = [self.tokens, self.weights, self.index, self.order, self.routed, self.shared_output]
        return [tensor for tensor in held if tensor is not None]

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
        start, stop = self.spans[unit]
        pairs = self.order[start:stop]  # [m], ascending (token, slot): no nonzero, no sync
        rows, slots = pairs // self.index.shape[1], pairs % self.index.shape[1]
        index, weights = self.index[rows, slots, None], self.weights[rows, slots, None]  # [m, 1] each
        hint = {"expert": unit} if self.hint else {}
        output = self.parts.experts(self.tokens[rows], index, torch.ones_like(weights), **hint)  # [m, hidden], unweighted
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
