"""The stages of a Hugging Face decoder-only MoE model, held as the executor runs them.

Every supported family stores its model the same way (`model.model.embed_tokens`, `.rotary_emb`,
`.layers`, `.norm`, `model.lm_head`) and its decoder layers as residual blocks of two halves:

    h = h + out_norm(attention(in_norm(h))) [* m]       # the attention half
    h = h + out_norm(mlp(in_norm(h))) [* m]             # the MLP half: an MoE block or a dense MLP

where each half has a norm before it (pre-norm, most families), after it (post-norm, FlexOlmo),
or both (AFMoE); m is a residual multiplier (Granite's; absent elsewhere).

`qllm.modeling.adapters.generic` finds these modules in a layer; a family's differences are declared in
`qllm.modeling.adapters.families`. Layer and iteration granularity call each layer whole; expert granularity
runs the two halves through `LayerParts`, calling the layer's own modules in the layer's own order
(nothing is copied).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import transformers
from torch import nn

from qllm.kv import KVShape
from qllm.modeling.moe import MoeParts


def _normed(norm: nn.Module | None, hidden: torch.Tensor) -> torch.Tensor:
    return hidden if norm is None else norm(hidden)


@dataclass(frozen=True)
class LayerParts:
    """One decoder layer's modules, held (never copied or subclassed)."""

    self_attn: nn.Module  # (hidden_states, position_embeddings, attention_mask, position_ids, cache) -> (out, ...)
    mlp: nn.Module  # the MoE block, or a dense MLP: [batch, query, hidden] -> [batch, query, hidden] (or a tuple)
    moe: MoeParts | None  # how to run the layer's MLP half expert by expert; None: a dense layer, `mlp` whole
    attention_norm: nn.Module | None = None  # before attention (input_layernorm)
    attention_out_norm: nn.Module | None = None  # on attention's output, before its residual add
    mlp_norm: nn.Module | None = None  # before the MLP (post_attention_layernorm in a pre-norm layer)
    mlp_out_norm: nn.Module | None = None  # on the MLP's output, before its residual add
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
        """The attention half, [batch, query, hidden]."""
        attended = self.self_attn(
            hidden_states=_normed(self.attention_norm, hidden),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
        )[0]
        return self.add_residual(hidden, _normed(self.attention_out_norm, attended))

    @torch.no_grad()
    def mlp_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the MLP half reads (its input norm applied), [batch, query, hidden]."""
        return _normed(self.mlp_norm, hidden)

    @torch.no_grad()
    def run_mlp(self, mlp_input: torch.Tensor) -> torch.Tensor:
        """The MLP half whole (its module, plus the MLP beside it if any), [batch, query, hidden]."""
        output = self.mlp(mlp_input)
        if isinstance(output, tuple):  # the block also returns its router's scores (gpt-oss)
            output = output[0]
        return output if self.beside_mlp is None else output + self.beside_mlp(mlp_input)

    @torch.no_grad()
    def finish_mlp(self, residual: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The MLP half's residual add, from its output (whole or expert by expert)."""
        return self.add_residual(residual, _normed(self.mlp_out_norm, output))

    @torch.no_grad()
    def add_residual(self, residual: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """residual + output [* residual_multiplier], as the layer adds each half."""
        if self.residual_multiplier is None:
            return residual + output
        return residual + output * self.residual_multiplier


@dataclass(frozen=True)
class DecoderAdapter:
    """What `qllm.modeling.adapters.ModelAdapter` asks for, for a model laid out as above."""

    embed_tokens: Callable[[torch.Tensor], torch.Tensor]  # input_ids [batch, query] -> hidden [batch, query, hidden]
    rotary_emb: nn.Module  # (hidden, position_ids [batch, query]) -> (cos, sin) [batch, query, head_dim]
    layers: Sequence[nn.Module]  # decoder layers, called whole at layer/iteration granularity
    norm: nn.Module  # final norm
    lm_head: Callable[[torch.Tensor], torch.Tensor]  # hidden [..., hidden] -> logits [..., vocab]
    sliding_windows: Sequence[int | None]  # per layer: attention window in tokens, None for full attention
    parts: Sequence[LayerParts]  # per layer: its halves, for expert granularity
    kv: KVShape | None  # what each layer's attention caches per token (qllm.modeling.adapters.kv_probe)


def check_cache_argument(layer: nn.Module, attention: nn.Module) -> None:
    """The executor hands each decoder layer and its attention the cache as `cache=`, the name
    transformers gave it in 5.24; an older release (`past_key_values=`) would drop it silently."""
    for module in (layer, attention):
        if "cache" not in inspect.signature(module.forward).parameters:
            raise RuntimeError(
                f"transformers {transformers.__version__}: {type(module).__name__}.forward takes no `cache` "
                f"argument (older 5.x releases call it `past_key_values`), so the executor's KV cache would be "
                f"ignored; install the version the project is tested with (pyproject.toml: transformers>=5.24,<5.25)"
            )
