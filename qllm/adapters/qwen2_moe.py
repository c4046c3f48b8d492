"""Qwen2-MoE: a gated shared expert beside the routed ones; optional dense layers and sliding windows.

- Shared expert: the block adds sigmoid(shared_expert_gate(x)) * shared_expert(x) to the routed
  experts' sum; here it is one more unit after the routed experts.
- `norm_topk_prob` (off by default in Qwen2-MoE) lives in the router, which is called as is.
- Dense layers: layers in `mlp_only_layers`, or off the `decoder_sparse_step` grid, hold a plain
  MLP (no `experts`); they run whole, with a checkpoint after their attention half.
- Sliding windows: `use_sliding_window` makes some layers "sliding_attention" (`layer_types`);
  each layer gets its own window, as Qwen2MoeModel builds one mask per layer type.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from qllm.adapters.decoder import DecoderAdapter, decoder_adapter
from qllm.moe import MoeParts


def gated_shared_expert(block: nn.Module):
    """tokens [tokens, hidden] -> sigmoid(shared_expert_gate(tokens)) * shared_expert(tokens), as the block adds it."""

    def shared(tokens: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(block.shared_expert_gate(tokens)) * block.shared_expert(tokens)

    return shared


def moe_parts(block: nn.Module, num_experts: int, shared=None) -> MoeParts | None:
    """The block's router and experts; None for a dense MLP layer."""
    if not hasattr(block, "experts"):
        return None
    return MoeParts(block.gate, block.experts, num_experts, shared)


def layer_windows(config) -> list[int | None]:
    return [config.sliding_window if kind == "sliding_attention" else None for kind in config.layer_types]


def qwen2_moe_adapter(model: PreTrainedModel) -> DecoderAdapter:
    config = model.config
    parts = [
        moe_parts(layer.mlp, config.num_experts, gated_shared_expert(layer.mlp)) for layer in model.model.layers
    ]
    return decoder_adapter(model, layer_windows(config), parts)
