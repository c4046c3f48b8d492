"""GraniteMoE and GraniteMoeShared: Mixtral's layout with four scalar multipliers, the MLP half named
`block_sparse_moe`, and (Shared) a dense `shared_mlp` beside the routed experts.

The multipliers live outside the layer's modules, so this adapter applies them where the model
does: embeddings times `embedding_multiplier` (GraniteMoeModel.forward), each half's output times
`residual_multiplier` before its residual add (the decoder layer), logits divided by
`logits_scaling` (GraniteMoeForCausalLM.forward). `attention_multiplier` is inside attention.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from transformers import PreTrainedModel

from qllm.adapters.decoder import DecoderAdapter, decoder_adapter
from qllm.moe import MoeParts


def scaled_embeddings(embed_tokens: nn.Module, multiplier: float):
    def embed(input_ids: torch.Tensor) -> torch.Tensor:
        return embed_tokens(input_ids) * multiplier  # [batch, query, hidden]

    return embed


def scaled_logits(lm_head: nn.Module, logits_scaling: float):
    def logits(hidden: torch.Tensor) -> torch.Tensor:
        return lm_head(hidden) / logits_scaling  # [..., vocab]

    return logits


def granitemoe_adapter(model: PreTrainedModel) -> DecoderAdapter:
    config = model.config
    layers = model.model.layers
    parts = [  # the shared MLP (GraniteMoeShared) is the unit after the routed experts
        MoeParts(layer.block_sparse_moe.router, layer.block_sparse_moe.experts, config.num_local_experts,
                 getattr(layer, "shared_mlp", None))
        for layer in layers
    ]  # fmt: skip
    adapter = decoder_adapter(
        model, [None] * len(layers), parts, mlp_name="block_sparse_moe", residual_multiplier=config.residual_multiplier,
        beside_mlp_name="shared_mlp",
    )
    return replace(
        adapter,
        embed_tokens=scaled_embeddings(adapter.embed_tokens, config.embedding_multiplier),
        lm_head=scaled_logits(adapter.lm_head, config.logits_scaling),
    )
