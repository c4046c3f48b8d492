"""Families QLLM refuses before building anything, in one line that names what it cannot preempt.

A preempted pass resumes from its generator's frame plus each sequence's KV cache; a layer that
keeps any other state between tokens (a recurrent state, a convolution window) has nothing in the KV
pool to hold it, so a family with such layers cannot be run, preempted or resumed yet.
"""

from __future__ import annotations

from qllm.errors import ConfigurationError

KV_LAYER_TYPES = ("full_attention", "sliding_attention")  # layer_types whose only state is a KV cache

STATEFUL_LAYERS = {  # model_type -> its layers that keep state other than a KV cache
    "qwen3_next": "gated DeltaNet linear-attention layers (Qwen3NextGatedDeltaNet)",
    "qwen3_5_moe": "gated DeltaNet linear-attention layers (Qwen3_5MoeGatedDeltaNet)",
    "qwen3_5_moe_text": "gated DeltaNet linear-attention layers (Qwen3_5MoeGatedDeltaNet)",
    "jamba": "Mamba layers (JambaMambaMixer)",
    "nemotron_h": "Mamba2 layers (NemotronHMamba2Mixer)",
    "granitemoehybrid": "Mamba2 layers (GraniteMoeHybridMambaLayer)",
    "minimax": "lightning linear-attention layers (MiniMaxLightningAttention)",
    "kimi_linear": "Kimi delta-attention layers (KimiLinearDeltaAttention)",
    "lfm2_moe": "short-convolution layers (Lfm2MoeShortConv)",
    "bailing_hybrid": "delta linear-attention layers (BailingHybridDeltaAttention)",
}


def refuse_stateful_layers(config) -> None:
    """A one-line ConfigurationError if `config`'s model keeps state other than a KV cache, or has
    attention layers whose mask the executor does not build."""
    model_type = config.model_type
    if model_type in STATEFUL_LAYERS:
        raise ConfigurationError(
            f"model_type {model_type!r}: its {STATEFUL_LAYERS[model_type]} keep a recurrent or convolution state, "
            f"not a key/value cache, so QLLM cannot preempt and resume them yet"
        )
    others = sorted(set(getattr(config, "layer_types", None) or ()) - set(KV_LAYER_TYPES))
    if others:
        raise ConfigurationError(
            f"model_type {model_type!r}: layer_types {others} are neither full nor sliding-window attention, "
            f"whose only state is a key/value cache; QLLM runs {list(KV_LAYER_TYPES)} layers only"
        )
