"""Qwen3-MoE: no shared expert; q/k norms inside attention; optional dense layers and a sliding window.

- `norm_topk_prob` (on in released Qwen3-MoE checkpoints) lives in the router, called as is.
- Dense layers (`mlp_only_layers`, `decoder_sparse_step`) run whole, as in Qwen2-MoE.
- `use_sliding_window` sets one window for every layer (Qwen3MoeModel builds a single mask).
"""

from __future__ import annotations

from transformers import PreTrainedModel

from qllm.adapters.decoder import DecoderAdapter, decoder_adapter
from qllm.adapters.qwen2_moe import moe_parts


def qwen3_moe_adapter(model: PreTrainedModel) -> DecoderAdapter:
    config = model.config
    layers = model.model.layers
    parts = [moe_parts(layer.mlp, config.num_experts) for layer in layers]
    return decoder_adapter(model, [config.sliding_window] * len(layers), parts)
