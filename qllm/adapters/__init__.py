"""Model-family adapters: where a Hugging Face model keeps the stages the executor runs.

The executor knows only `ModelAdapter`. Adding a family is one small file with a class like
`MixtralAdapter` and one line in `ADAPTERS`, keyed by the config's `model_type`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import nn
from transformers import PreTrainedModel

from qllm.adapters.mixtral import MixtralAdapter


class ModelAdapter(Protocol):
    """The model's own modules, held (never copied or subclassed), in the order a pass runs them."""

    embed_tokens: nn.Module  # input_ids [batch, query] -> hidden [batch, query, hidden]
    rotary_emb: nn.Module  # (hidden, position_ids [batch, query]) -> (cos, sin) [batch, query, head_dim]
    layers: Sequence[nn.Module]  # decoder layers: attention (through the cache), then the MoE block
    norm: nn.Module  # final norm
    lm_head: nn.Module  # hidden [..., hidden] -> logits [..., vocab]
    sliding_window: int | None  # attention window in tokens, None for full attention


ADAPTERS: dict[str, type] = {  # model_type -> adapter class, built as Adapter(model)
    "mixtral": MixtralAdapter,
}


def adapter_for(model: PreTrainedModel) -> ModelAdapter:
    model_type = model.config.model_type
    if model_type not in ADAPTERS:
        raise ValueError(
            f"no QLLM adapter for model_type {model_type!r} (adapters exist for {sorted(ADAPTERS)}); "
            f"add one as qllm/adapters/{model_type}.py and register it in qllm.adapters.ADAPTERS"
        )
    return ADAPTERS[model_type](model)
