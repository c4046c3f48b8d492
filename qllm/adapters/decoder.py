"""The stages of a Hugging Face decoder-only MoE model, held as the executor runs them.

Every supported family stores its model the same way (`model.model.embed_tokens`, `.rotary_emb`,
`.layers`, `.norm`, `model.lm_head`) and its decoder layers as pre-norm residual blocks:

    h = h + self_attn(input_layernorm(h)) [* m]          # the attention half
    h = h + mlp(post_attention_layernorm(h)) [* m]       # the MLP half: an MoE block or a dense MLP

(m: a residual multiplier, Granite's; absent elsewhere).

A family adapter (one file each) says what differs: where the MoE block keeps its router and
experts, its shared expert, which layers are dense, each layer's attention window. Layer and
iteration granularity call each layer whole; expert granularity runs the two halves through
`LayerParts`, calling the layer's own modules in the layer's own order (nothing is copied).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import PreTrainedModel

from qllm.moe import MoeParts


@dataclass(frozen=True)
class LayerParts:
    """One pre-norm decoder layer's modules, held (never copied or subclassed)."""

    input_layernorm: nn.Module
    self_attn: nn.Module  # (hidden_states, position_embeddings, attention_mask, position_ids, cache) -> (out, _)
    post_attention_layernorm: nn.Module
    mlp: nn.Module  # the MoE block, or a dense MLP: [batch, query, hidden] -> [batch, query, hidden]
    moe: MoeParts | None  # how to run the layer's MLP half expert by expert; None: a dense layer, `mlp` whole
    residual_multiplier: float | None = None  # scales each half's output before its residual add (Granite)
    beside_mlp: nn.Module | None = None  # a dense MLP the layer adds beside `mlp` (GraniteMoeShared's shared_mlp)

    @torch.no_grad()
    def attend(
        self,
        hidden: torch.Tensor,  # [batch, query, hidden]
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor,  # [batch, 1, query, key]
        position_ids: torch.Tensor,  # [batch, query]
        cache,
    ) -> torch.Tensor:
        """The attention half: hidden + self_attn(input_layernorm(hidden)), [batch, query, hidden]."""
        attended, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
        )
        return self.add_residual(hidden, attended)

    @torch.no_grad()
    def mlp_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """post_attention_layernorm(hidden): what the MLP half reads, [batch, query, hidden]."""
        return self.post_attention_layernorm(hidden)

    @torch.no_grad()
    def run_mlp(self, mlp_input: torch.Tensor) -> torch.Tensor:
        """The MLP half whole (its module, plus the MLP beside it if any), [batch, query, hidden]."""
        output = self.mlp(mlp_input)
        return output if self.beside_mlp is None else output + self.beside_mlp(mlp_input)

    @torch.no_grad()
    def add_residual(self, residual: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """residual + output [* residual_multiplier], as the layer adds each half."""
        if self.residual_multiplier is None:
            return residual + output
        return residual + output * self.residual_multiplier


@dataclass(frozen=True)
class DecoderAdapter:
    """What `qllm.adapters.ModelAdapter` asks for, for a model laid out as above."""

    embed_tokens: Callable[[torch.Tensor], torch.Tensor]  # input_ids [batch, query] -> hidden [batch, query, hidden]
    rotary_emb: nn.Module  # (hidden, position_ids [batch, query]) -> (cos, sin) [batch, query, head_dim]
    layers: Sequence[nn.Module]  # decoder layers, called whole at layer/iteration granularity
    norm: nn.Module  # final norm
    lm_head: Callable[[torch.Tensor], torch.Tensor]  # hidden [..., hidden] -> logits [..., vocab]
    sliding_windows: Sequence[int | None]  # per layer: attention window in tokens, None for full attention
    parts: Sequence[LayerParts]  # per layer: its halves, for expert granularity


def check_cache_argument(layers: Sequence[nn.Module]) -> None:
    """The executor hands each decoder layer and its attention the cache as `cache=`, the name
    transformers gave it in 5.24; an older release (`past_key_values=`) would drop it silently."""
    for module in (layers[0], layers[0].self_attn):
        if "cache" not in inspect.signature(module.forward).parameters:
            raise RuntimeError(
                f"transformers {transformers.__version__}: {type(module).__name__}.forward takes no `cache` "
                f"argument (older 5.x releases call it `past_key_values`), so the executor's KV cache would be "
                f"ignored; install the version the project is tested with (pyproject.toml: transformers>=5.24,<5.25)"
            )


def decoder_adapter(
    model: PreTrainedModel,
    sliding_windows: Sequence[int | None],
    moe_parts: Sequence[MoeParts | None],
    mlp_name: str = "mlp",
    residual_multiplier: float | None = None,
    beside_mlp_name: str | None = None,
) -> DecoderAdapter:
    """Hold `model`'s stages; `sliding_windows` and `moe_parts` (None: a dense layer) are per layer;
    each layer keeps its MLP half as attribute `mlp_name`, and any MLP it adds beside it as
    `beside_mlp_name` (absent or None on a layer: nothing beside)."""
    decoder = model.model
    layers = list(decoder.layers)
    parts = [
        LayerParts(
            layer.input_layernorm, layer.self_attn, layer.post_attention_layernorm, getattr(layer, mlp_name), moe,
            residual_multiplier, getattr(layer, beside_mlp_name, None) if beside_mlp_name else None,
        )
        for layer, moe in zip(layers, moe_parts, strict=True)
    ]
    return DecoderAdapter(
        embed_tokens=decoder.embed_tokens,
        rotary_emb=decoder.rotary_emb,
        layers=layers,
        norm=decoder.norm,
        lm_head=model.lm_head,
        sliding_windows=list(sliding_windows),
        parts=parts,
    )
