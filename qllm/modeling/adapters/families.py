"""What the generic adapter (`qllm.modeling.adapters.generic`) cannot see by looking at a family's modules.

Most families need nothing here: their layers, attention, norms, router, experts and shared experts
are found by name and kind. A family is listed only for a fact its modules do not show:

- `router_args`: attributes of the MoE block that the block passes its router after the tokens
  (a score-correction bias kept on the block, not on the router); `router_reads_batches`: the router
  takes [batch, query, hidden], not [tokens, hidden];
- `granite_scales`: the four scalar multipliers GraniteMoE applies outside its modules.

`RUNS` names the families the tests run token-exact (tests/test_families.py); the adapter also
tries any other family whose modules it recognizes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """A family's declared differences; the defaults are what most families do."""

    router_args: tuple[str, ...] = ()  # MoE block attributes passed to its router after the tokens
    router_reads_batches: bool = False  # the router unpacks a 3D input
    granite_scales: bool = False  # embeddings * embedding_multiplier, halves * residual_multiplier, logits / logits_scaling


FAMILIES: dict[str, Family] = {  # model_type -> what differs from the default
    "granitemoe": Family(granite_scales=True),
    "granitemoeshared": Family(granite_scales=True),
    "minimax_m2": Family(router_args=("e_score_correction_bias",)),
    "afmoe": Family(router_args=("expert_bias",), router_reads_batches=True),
}

DEFAULT = Family()
