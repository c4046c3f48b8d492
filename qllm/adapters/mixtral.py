"""Mixtral: Mistral's decoder layout, every layer a sparse MoE block with top-k routing."""

from __future__ import annotations

from transformers import PreTrainedModel


class MixtralAdapter:
    def __init__(self, model: PreTrainedModel) -> None:
        decoder = model.model  # MixtralModel
        self.embed_tokens = decoder.embed_tokens
        self.rotary_emb = decoder.rotary_emb
        self.layers = list(decoder.layers)
        self.norm = decoder.norm
        self.lm_head = model.lm_head
        self.sliding_window = model.config.sliding_window
