"""Mixtral: Mistral's decoder layout, every layer a sparse MoE block (router `gate`, top-k softmax)."""

from __future__ import annotations

from transformers import PreTrainedModel

from qllm.adapters.decoder import DecoderAdapter, decoder_adapter
from qllm.moe import MoeParts


def mixtral_adapter(model: PreTrainedModel) -> DecoderAdapter:
    config = model.config
    layers = model.model.layers
    moe_parts = [MoeParts(layer.mlp.gate, layer.mlp.experts, config.num_local_experts) for layer in layers]
    # One window for every layer, as MixtralModel builds its mask (None: full attention).
    return decoder_adapter(model, [config.sliding_window] * len(layers), moe_parts)
