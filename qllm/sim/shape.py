"""A model as the simulator sees it: layer kinds, sizes and parameter counts, no weights.

The shape is read from the model's own Hugging Face modules, built on PyTorch's meta device
(shapes without storage) and held through the real executor's family adapter, so which layers are
dense, which have a shared expert and how many parameters each stage reads are what the real
executor would run; nothing is allocated and nothing is downloaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig

from qllm.modeling.adapters import adapter_for
from qllm.modeling.adapters.decoder import LayerParts
from qllm.errors import ConfigurationError
from qllm.modeling.models import eager_meta_model
from qllm.modeling.moe import sums_in_expert_order


def num_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    num_layers: int
    hidden_size: int
    head_dim: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    num_experts: int  # routed experts per MoE layer
    top_k: int  # experts each token is routed to
    sparse_layers: tuple[bool, ...]  # per layer: an MoE block (True) or a dense MLP
    has_shared_expert: bool  # a unit after the routed experts, numbered num_experts
    num_mask_windows: int  # distinct attention windows: one mask each per pass
    sums_in_expert_order: bool  # the experts module's `eager` running sum (else one output per top-k slot)
    dtype_bytes: int  # compute dtype: activations and KV
    kv_bytes_per_token: int  # keys and values every layer caches per token (keys and values may differ in width)
    is_4bit: bool  # bitsandbytes NF4 weights (the config's quantization_config)
    # Parameters each stage reads: one layer's attention, router, shared expert or dense MLP; one routed expert
    attention_params: int
    router_params: int
    expert_params: int
    shared_expert_params: int
    dense_mlp_params: int
    lm_head_params: int

    @functools.cached_property
    def sparse_layer_indices(self) -> np.ndarray:
        return np.flatnonzero(self.sparse_layers)

    @functools.cached_property
    def dense_layer_indices(self) -> np.ndarray:
        return np.flatnonzero(~np.asarray(self.sparse_layers))

    @classmethod
    def of(cls, config: PretrainedConfig) -> ModelShape:
        model = eager_meta_model(config)
        adapter = adapter_for(model)
        sparse = [parts for parts in adapter.parts if parts.moe is not None]
        if not sparse:
            raise ConfigurationError(f"model_type {config.model_type!r} has no MoE layer: the simulator models MoE models")
        moe, dense = sparse[0].moe, next((parts.mlp for parts in adapter.parts if parts.moe is None), None)
        dtype = config.dtype or torch.float32
        quantization = getattr(config, "quantization_config", None) or {}
        if not isinstance(quantization, dict):
            quantization = quantization.to_dict()
        return cls(
            model_type=config.model_type,
            num_layers=len(adapter.layers),
            hidden_size=config.hidden_size,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            vocab_size=config.vocab_size,
            num_experts=moe.num_experts,
            top_k=getattr(moe.router, "top_k", None) or config.num_experts_per_tok,
            sparse_layers=tuple(parts.moe is not None for parts in adapter.parts),
            has_shared_expert=moe.shared is not None,
            num_mask_windows=len(set(adapter.sliding_windows)),
            sums_in_expert_order=sums_in_expert_order(moe.experts),
            dtype_bytes=torch.empty((), dtype=dtype).element_size(),
            kv_bytes_per_token=adapter.kv.bytes_per_token(dtype),
            is_4bit=bool(quantization.get("load_in_4bit")),
            attention_params=num_params(sparse[0].self_attn),
            router_params=num_params(moe.router),
            expert_params=num_params(moe.experts) // moe.num_experts,
            shared_expert_params=shared_expert_params(sparse[0]),
            dense_mlp_params=num_params(dense),
            lm_head_params=num_params(model.lm_head),
        )


def shared_expert_params(parts: LayerParts) -> int:
    """A shared expert held as a module (GraniteMoeShared's `shared_mlp`), or inside the MoE block
    beside its router and experts (Qwen2-MoE's gated `shared_expert`)."""
    moe = parts.moe
    if moe.shared is None:
        return 0
    if isinstance(moe.shared, nn.Module):
        return num_params(moe.shared)
    return num_params(parts.mlp) - num_params(moe.router) - num_params(moe.experts)
