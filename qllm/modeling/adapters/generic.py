"""One adapter for every decoder-only MoE family of transformers: it finds the model's stages by
looking at its modules, and takes a family's differences from `qllm.modeling.adapters.families`.

What it looks for, in each decoder layer (`model.model.layers[i]`):

- attention: `self_attn` (or `self_attention`), called with `cache=`;
- the MLP half: `mlp` (or `block_sparse_moe`, `feed_forward`); a block holding `experts` is sparse,
  anything else a dense MLP run whole;
- norms: pre-norm (`input_layernorm`, `post_attention_layernorm`), post-norm (no `input_layernorm`:
  `post_attention_layernorm`, `post_feedforward_layernorm` on each half's output) or both
  (`pre_mlp_layernorm`/`pre_feedforward_layernorm` beside `post_mlp_layernorm`/`post_feedforward_layernorm`);
- in a sparse block: the router (`gate` or `router`), called as is; the routed experts, which must
  take transformers' experts interface `(hidden_states, top_k_index, top_k_weights)`; a shared
  expert (`shared_experts`, `shared_expert` times sigmoid(`shared_expert_gate`) where the block has
  that gate, or `shared_mlp`), and a layer's `shared_mlp` beside the block (GraniteMoeShared).

Each layer's attention window comes from `config.layer_types` (else `config.sliding_window` for
every layer), and the KV each layer caches is measured by one call of its attention (`kv_probe`).
Anything it cannot find ends in one line that names the module it looked for.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch
from torch import nn
from transformers import PreTrainedModel

from qllm.modeling.adapters.decoder import DecoderAdapter, LayerParts, check_cache_argument
from qllm.modeling.adapters.families import DEFAULT, FAMILIES, Family
from qllm.modeling.adapters.kv_probe import probe_kv_shape
from qllm.modeling.adapters.refusals import refuse_stateful_layers
from qllm.errors import ConfigurationError
from qllm.modeling.moe import MoeParts

ATTENTION_NAMES = ("self_attn", "self_attention")
MLP_NAMES = ("mlp", "block_sparse_moe", "feed_forward")
ROUTER_NAMES = ("gate", "router")
SHARED_NAMES = ("shared_experts", "shared_expert", "shared_mlp")
BLOCK_PARTS = {*ROUTER_NAMES, "experts", *SHARED_NAMES, "shared_expert_gate"}  # what a sparse block may hold
EXPERTS_INTERFACE = ("hidden_states", "top_k_index", "top_k_weights")


def generic_adapter(model: PreTrainedModel) -> DecoderAdapter:
    """`model`'s stages, found by looking (see the module docstring)."""
    config = model.config
    refuse_stateful_layers(config)
    family = FAMILIES.get(config.model_type, DEFAULT)
    decoder = _child(model, "model", model)
    layers = list(_child(decoder, "layers", model))
    parts = [layer_parts(model, layer, family) for layer in layers]
    if all(p.moe is None for p in parts):
        raise ConfigurationError(
            f"model_type {config.model_type!r}: no decoder layer's MLP block holds routed `experts`; QLLM runs "
            f"mixture-of-experts models"
        )
    check_cache_argument(layers[0], parts[0].self_attn)
    rotary_emb = _child(decoder, "rotary_emb", model)
    if "layer_type" in inspect.signature(rotary_emb.forward).parameters:
        raise ConfigurationError(
            f"model_type {config.model_type!r}: {type(rotary_emb).__name__} computes a different rope per layer type; "
            f"QLLM's executor computes one rope per pass"
        )
    adapter = DecoderAdapter(
        embed_tokens=_child(decoder, "embed_tokens", model),
        rotary_emb=rotary_emb,
        layers=layers,
        norm=_child(decoder, "norm", model),
        lm_head=_child(model, "lm_head", model),
        sliding_windows=layer_windows(config, len(layers)),
        parts=parts,
        kv=None,
    )
    if family.granite_scales:
        adapter = granite_scaled(adapter, config)
    return replace(adapter, kv=probe_kv_shape(adapter))


def layer_parts(model: PreTrainedModel, layer: nn.Module, family: Family) -> LayerParts:
    attention = _first_child(layer, ATTENTION_NAMES, model)
    mlp = _first_child(layer, MLP_NAMES, model)
    beside = getattr(layer, "shared_mlp", None)
    norms = layer_norms(layer, model)
    return LayerParts(attention, mlp, moe_parts(model, mlp, beside, family), *norms, beside_mlp=beside)


def layer_norms(layer: nn.Module, model: PreTrainedModel) -> tuple[nn.Module | None, ...]:
    """(before attention, on attention's output, before the MLP, on the MLP's output): pre-norm
    (input_layernorm, post_attention_layernorm before the MLP), post-norm (no input_layernorm:
    post_attention_layernorm and post_feedforward_layernorm on each half's output), or a norm
    before and after each half (pre_mlp/pre_feedforward beside post_mlp/post_feedforward, or
    post_self_attn_layernorm on attention's output)."""
    has = lambda name: getattr(layer, name, None) is not None  # noqa: E731
    first = lambda *names: next((name for name in names if has(name)), None)  # noqa: E731
    attention_in = first("input_layernorm")
    mlp_in = first("pre_feedforward_layernorm", "pre_mlp_layernorm")
    attention_out = first("post_self_attn_layernorm") or (
        first("post_attention_layernorm") if mlp_in or not attention_in else None
    )
    if mlp_in is None and attention_out != "post_attention_layernorm":
        mlp_in = first("post_attention_layernorm")
    mlp_out = first("post_feedforward_layernorm", "post_mlp_layernorm")
    if not (mlp_in or mlp_out):
        raise ConfigurationError(
            f"model_type {model.config.model_type!r}: {type(layer).__name__} has no norm of its own around its MLP "
            f"(has {[n for n, _ in layer.named_children()]}); QLLM's generic adapter runs layers whose attention and "
            f"MLP are two residual halves, one after the other, not in parallel"
        )
    names = (attention_in, attention_out, mlp_in, mlp_out)
    return tuple(None if name is None else getattr(layer, name) for name in names)


def moe_parts(model: PreTrainedModel, block: nn.Module, beside: nn.Module | None, family: Family) -> MoeParts | None:
    """The block's router, experts and shared expert; None for a dense MLP."""
    experts = getattr(block, "experts", None)
    if experts is None:
        return None
    taken = list(inspect.signature(experts.forward).parameters)[:3]
    if not takes_experts_interface(taken):
        raise ConfigurationError(
            f"model_type {model.config.model_type!r}: {type(experts).__name__}.forward takes {taken}, not transformers' "
            f"experts interface {list(EXPERTS_INTERFACE)}, so QLLM cannot run its experts one by one"
        )
    unknown = sorted({name for name, _ in block.named_children()} - BLOCK_PARTS)
    if unknown:
        raise ConfigurationError(
            f"model_type {model.config.model_type!r}: {type(block).__name__} also holds {unknown}, which QLLM's generic "
            f"adapter does not know where to run when it runs the block expert by expert"
        )
    router = _first_child(block, ROUTER_NAMES, model)
    return MoeParts(
        router=router,
        experts=experts,
        num_experts=experts.num_experts,
        shared=beside if beside is not None else shared_expert(block),
        route=declared_route(block, router, family),
    )


def takes_experts_interface(parameters: list[str]) -> bool:
    """(hidden_states, top_k_index, top_k_weights), under these names or a family's own (gpt-oss:
    router_indices, routing_weights)."""
    return len(parameters) == 3 and "ind" in parameters[1] and "weight" in parameters[2]


def declared_route(block: nn.Module, router: nn.Module, family: Family):
    """tokens [tokens, hidden] -> the router's (logits, weights, index), called as the block calls it
    where that differs from router(tokens); None otherwise."""
    if not family.router_args and not family.router_reads_batches:
        return None

    def route(tokens: torch.Tensor) -> tuple:
        args = [getattr(block, name) for name in family.router_args]  # read per call: a move replaces buffers
        return router(tokens[None] if family.router_reads_batches else tokens, *args)

    return route


def shared_expert(block: nn.Module):
    """tokens [tokens, hidden] -> the shared expert's output as the block adds it; None if it has none."""
    for name in SHARED_NAMES:
        shared = getattr(block, name, None)
        if shared is not None:
            break
    else:
        return None
    gate = getattr(block, "shared_expert_gate", None)
    if gate is None:
        return shared

    def gated(tokens: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(gate(tokens)) * shared(tokens)

    return gated


def layer_windows(config, num_layers: int) -> list[int | None]:
    """Per layer: its attention window in tokens, None for full attention, as the model builds its masks."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return [config.sliding_window if kind == "sliding_attention" else None for kind in layer_types[:num_layers]]
    return [getattr(config, "sliding_window", None)] * num_layers


def granite_scaled(adapter: DecoderAdapter, config) -> DecoderAdapter:
    """GraniteMoE's multipliers, applied where its model applies them: embeddings times
    `embedding_multiplier` (the model's forward), each half's output times `residual_multiplier`
    (the decoder layer), logits divided by `logits_scaling` (the causal LM's forward)."""
    embed, lm_head = adapter.embed_tokens, adapter.lm_head
    return replace(
        adapter,
        embed_tokens=lambda input_ids: embed(input_ids) * config.embedding_multiplier,
        lm_head=lambda hidden: lm_head(hidden) / config.logits_scaling,
        parts=[replace(parts, residual_multiplier=config.residual_multiplier) for parts in adapter.parts],
    )


def _first_child(module: nn.Module, names: tuple[str, ...], model: PreTrainedModel) -> nn.Module:
    for name in names:
        child = getattr(module, name, None)
        if child is not None:
            return child
    return _child(module, names[0], model, also=names[1:])


def _child(module: nn.Module, name: str, model: PreTrainedModel, also: tuple[str, ...] = ()) -> nn.Module:
    child = getattr(module, name, None)
    if child is None:
        looked = " or ".join(f"`{n}`" for n in (name, *also))
        children = [n for n, _ in module.named_children()]
        raise ConfigurationError(
            f"model_type {model.config.model_type!r}: QLLM's generic adapter found no {looked} in "
            f"{type(module).__name__} (it has {children}); it runs decoder-only models laid out as "
            f"model.model.layers[i].{{self_attn, mlp}} (qllm/modeling/adapters/generic.py)"
        )
    return child
