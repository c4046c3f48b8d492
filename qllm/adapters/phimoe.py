"""PhiMoE: router named `router`, sparsemixer top-2 routing, LayerNorm (not RMSNorm), biased lm_head.

Sparsemixer picks exactly two experts per token whatever `num_experts_per_tok` says; in eval mode
it is deterministic. The router module runs it, called as is, so nothing here re-implements it.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from qllm.adapters.decoder import DecoderAdapter, decoder_adapter
from qllm.moe import MoeParts


def phimoe_adapter(model: PreTrainedModel) -> DecoderAdapter:
    config = model.config
    layers = model.model.layers
    parts = [MoeParts(layer.mlp.router, layer.mlp.experts, config.num_local_experts) for layer in layers]
    # One window for every layer, as PhimoeModel builds its mask (None: full attention).
    return decoder_adapter(model, [config.sliding_window] * len(layers), parts)
