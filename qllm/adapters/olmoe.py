"""OLMoE: every layer sparse (router `gate`), q/k norms and optional qkv clipping inside attention,
full attention everywhere (no sliding window)."""

from __future__ import annotations

from transformers import PreTrainedModel

from qllm.adapters.decoder import DecoderAdapter, decoder_adapter
from qllm.moe import MoeParts


def olmoe_adapter(model: PreTrainedModel) -> DecoderAdapter:
    config = model.config
    layers = model.model.layers
    parts = [MoeParts(layer.mlp.gate, layer.mlp.experts, config.num_experts) for layer in layers]
    return decoder_adapter(model, [None] * len(layers), parts)
