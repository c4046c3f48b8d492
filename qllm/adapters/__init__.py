"""Model-family adapters: where a Hugging Face model keeps the stages the executor runs.

The executor knows only `ModelAdapter`. Adding a family is one small file with a function like
`mixtral_adapter(model)` and one line in `ADAPTERS`, keyed by the config's `model_type`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedModel

from qllm.errors import ConfigurationError
from qllm.adapters.decoder import LayerParts
from qllm.adapters.granitemoe import granitemoe_adapter
from qllm.adapters.mixtral import mixtral_adapter
from qllm.adapters.olmoe import olmoe_adapter
from qllm.adapters.phimoe import phimoe_adapter
from qllm.adapters.qwen2_moe import qwen2_moe_adapter
from qllm.adapters.qwen3_moe import qwen3_moe_adapter


class ModelAdapter(Protocol):
    """The model's own modules, held (never copied or subclassed), in the order a pass runs them."""

    embed_tokens: Callable[[torch.Tensor], torch.Tensor]  # input_ids [batch, query] -> hidden [batch, query, hidden]
    rotary_emb: nn.Module  # (hidden, position_ids [batch, query]) -> (cos, sin) [batch, query, head_dim]
    layers: Sequence[nn.Module]  # decoder layers: attention (through the cache), then the MoE block
    norm: nn.Module  # final norm
    lm_head: Callable[[torch.Tensor], torch.Tensor]  # hidden [..., hidden] -> logits [..., vocab]
    sliding_windows: Sequence[int | None]  # per layer: attention window in tokens, None for full attention
    parts: Sequence[LayerParts]  # per layer: its attention and MLP halves, for expert granularity


ADAPTERS: dict[str, Callable[[PreTrainedModel], ModelAdapter]] = {  # model_type -> adapter builder
    "mixtral": mixtral_adapter,
    "qwen2_moe": qwen2_moe_adapter,
    "qwen3_moe": qwen3_moe_adapter,
    "olmoe": olmoe_adapter,
    "phimoe": phimoe_adapter,
    "granitemoe": granitemoe_adapter,
    "granitemoeshared": granitemoe_adapter,
}

UNSUPPORTED: dict[str, str] = {  # model_type -> why no adapter exists yet
    "deepseek_v2": "multi-head latent attention stores keys and values with different head sizes; qllm.kv holds one",
    "deepseek_v3": "multi-head latent attention stores keys and values with different head sizes; qllm.kv holds one",
    "granitemoehybrid": "Mamba layers keep a recurrent state, not a key/value cache",
    "qwen3_next": "linear-attention layers keep a recurrent state, not a key/value cache",
    "minimax": "linear-attention layers keep a recurrent state, not a key/value cache",
    "jamba": "Mamba layers keep a recurrent state, not a key/value cache",
}


def adapter_for(model: PreTrainedModel) -> ModelAdapter:
    model_type = model.config.model_type
    if model_type not in ADAPTERS:
        reason = f" ({UNSUPPORTED[model_type]})" if model_type in UNSUPPORTED else ""
        raise ConfigurationError(
            f"no QLLM adapter for model_type {model_type!r}{reason}; supported: {sorted(ADAPTERS)}. "
            f"To add one, write qllm/adapters/{model_type}.py (see qllm/adapters/mixtral.py) "
            f"and register it in qllm.adapters.ADAPTERS"
        )
    return ADAPTERS[model_type](model)
