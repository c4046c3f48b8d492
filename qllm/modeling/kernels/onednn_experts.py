"""The `onednn` experts implementation: grouped_mm's algorithm, one oneDNN GEMM pair per expert.

Registered in transformers' `ExpertsInterface`, so an experts module runs it when its config
says `_experts_implementation == "onednn"` (read at every call, like any implementation). Its
numerics are grouped_mm's: the (token, slot) pairs grouped by expert, one weighted output per
pair, summed over the slots at the end in the product's dtype, then cast. So
`qllm.modeling.moe.ExpertByExpert` runs it unchanged at expert granularity (an expert's rows form the
same GEMM either way). Only the GEMM kernel differs from grouped_mm's: float32 logits differ by
~1e-6; bfloat16 is bit-identical (bf16 `F.linear` already runs oneDNN).

The weights are reordered once into `ReorderedExperts`, a child module of the experts module
(`experts.onednn_weights`), and again if a weight is replaced or written in place.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.integrations.moe import ExpertsInterface

from qllm.modeling.kernels import onednn_ops
from qllm.modeling.kernels.grouped import grouped_by_expert
from qllm.modeling.kernels.onednn_linear import weight_key

ONEDNN = "onednn"  # the implementation's name in ExpertsInterface
UNSUPPORTED_LAYOUTS = {  # flags transformers' experts decorator sets -> what `onednn` does not compute
    "has_bias": "biases",
    "is_transposed": "transposed weights",
    "has_post_expert_norm": "a norm after each expert",
    "_is_expert_parallel": "expert parallelism",
}


def unsupported_reason(experts: nn.Module) -> str | None:
    """None when `onednn` computes what this experts module's own implementations compute."""
    name = type(experts).__name__
    if not getattr(experts, "has_gate", False) or not hasattr(experts, "gate_up_proj"):
        return f"{name}: experts without a fused gate_up projection"
    for flag, what in UNSUPPORTED_LAYOUTS.items():
        if getattr(experts, flag, False):
            return f"{name}: experts with {what}"
    return None


class ReorderedExperts(nn.Module):
    """Each expert's gate_up [2 x intermediate, hidden] and down [hidden, intermediate] weights, reordered."""

    def __init__(self, experts: nn.Module) -> None:
        super().__init__()
        self.gate_up: list[torch.Tensor] = []
        self.down: list[torch.Tensor] = []
        self.reordered_from: tuple = ()
        self.refresh(experts)

    def refresh(self, experts: nn.Module) -> ReorderedExperts:
        """Reorder again if a weight of `experts` changed since the last reorder."""
        key = (weight_key(experts.gate_up_proj), weight_key(experts.down_proj))
        if key != self.reordered_from:
            self.gate_up = [onednn_ops.reorder(w) for w in experts.gate_up_proj]
            self.down = [onednn_ops.reorder(w) for w in experts.down_proj]
            self.reordered_from = key
        return self

    def extra_repr(self) -> str:
        return f"experts={len(self.gate_up)}"


def attach(experts: nn.Module) -> None:
    """Give `experts` its reordered weights, as the child module `onednn_weights`."""
    experts.onednn_weights = ReorderedExperts(experts)


@torch.no_grad()
def onednn_experts_forward(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """hidden_states [tokens, hidden], top_k_index / top_k_weights [tokens, k] -> [tokens, hidden]."""
    reordered = getattr(self, "onednn_weights", None)
    if reordered is None:
        raise RuntimeError(
            f"{type(self).__name__} has no oneDNN weights; load the model with cpu_kernels='onednn' "
            f"(qllm.modeling.kernels.apply_cpu_kernels) rather than setting the experts implementation alone"
        )
    reordered.refresh(self)
    order = torch.argsort(top_k_index.reshape(-1), stable=True)  # (token, slot) pairs grouped by expert
    counts = torch.bincount(top_k_index.reshape(-1), minlength=self.num_experts).tolist()

    def run_expert(rows: torch.Tensor, expert: int) -> torch.Tensor:
        gated = self._apply_gate(onednn_ops.linear(rows, reordered.gate_up[expert]))
        return onednn_ops.linear(gated, reordered.down[expert])

    return grouped_by_expert(hidden_states, top_k_index, top_k_weights, order, counts, run_expert)


ExpertsInterface.register(ONEDNN, onednn_experts_forward)
