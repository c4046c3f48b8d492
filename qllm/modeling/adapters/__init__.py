"""Model-family adapters: where a Hugging Face model keeps the stages the executor runs.

The executor knows only `ModelAdapter`, built for every family by one generic adapter
(`qllm.modeling.adapters.generic`) that finds the stages by looking at the model's modules; what a family
does differently is a small declared entry in `qllm.modeling.adapters.families`. Families whose layers keep
state other than a KV cache are refused by name (`qllm.modeling.adapters.refusals`).
"""

from __future__ import annotations

from transformers import PreTrainedModel

from qllm.modeling.adapters.decoder import DecoderAdapter
from qllm.modeling.adapters.generic import generic_adapter
from qllm.modeling.adapters.refusals import refuse_stateful_layers

ModelAdapter = DecoderAdapter  # the model's own modules, held (never copied), in the order a pass runs them


def adapter_for(model: PreTrainedModel) -> ModelAdapter:
    """`model`'s stages; a one-line ConfigurationError names what QLLM cannot run."""
    refuse_stateful_layers(model.config)
    return generic_adapter(model)
