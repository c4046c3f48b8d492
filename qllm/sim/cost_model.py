"""What the simulator asks of a cost model: how long each stage of a forward pass takes.

A pass's shape is what the real executor's cost depends on: it right-pads every sequence's new
tokens to the longest (`query_len`) and attends over the longest cached-plus-new length
(`key_len`); every padded slot is embedded, routed and run through its experts. A cost model gives
the fixed stages of a pass of that shape (`StageCosts`) and each routed expert's cost from the
tokens it received. Cost models are configs of the `hardware` group: `profiled` (measured on this
machine by `qllm-profile`) or analytic for a named GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class PassShape:
    batch_size: int
    query_len: int  # tokens each sequence feeds, padded to the longest (1 at decode)
    key_len: int  # cached plus new tokens, padded to the longest
    real_tokens: int | None = None  # tokens fed, padding left out (None: no row is padded)

    @property
    def num_tokens(self) -> int:
        """Token slots attention runs through, padding included."""
        return self.batch_size * self.query_len

    @property
    def is_decode(self) -> bool:
        """One new token per row after a cached context (else a prompt, or a prompt's first token)."""
        return self.query_len == 1 and self.key_len > 1

    @property
    def num_real_tokens(self) -> int:
        """Tokens the MLP half of a layer runs on: the real executor packs them (qllm.real.row_groups)."""
        return self.num_tokens if self.real_tokens is None else self.real_tokens


@dataclass(frozen=True)
class StageCosts:
    """Seconds of each fixed stage of one pass, as the real executor and engine run them."""

    pass_start_s: float  # embeddings, position embeddings and masks, before the first layer
    attention_s: float  # one layer's attention half, residual included
    router_s: float  # one MoE block's input norm and router, before its first expert
    combine_s: float  # one MoE block's output and residual add, after its last expert
    shared_expert_s: float  # the shared expert, where the model has one (a unit after the routed ones)
    dense_mlp_s: float  # a dense layer's MLP half, whole
    layer_s: float  # an MoE layer called whole (layer and iteration granularity), at its typical routing
    pass_end_s: float  # final norm, LM head, next tokens, KV commit
    checkpoint_s: float  # the engine's own work at a checkpoint where the pass goes on
    pass_overhead_s: float  # the engine's own work between two passes (post-processing, the next batch)
    whole_pass_start_s: float | None = None  # pass_start_s where every layer is called whole (None: the same)

    def with_whole_layers(self) -> StageCosts:
        """These costs for a pass that calls every layer whole (layer and iteration granularity)."""
        return self if self.whole_pass_start_s is None else dataclasses.replace(self, pass_start_s=self.whole_pass_start_s)

    def scaled(self, factor: float, keep: tuple[str, ...] = ()) -> StageCosts:
        """These costs times `factor`, but for the fields named in `keep` (a field that is None stays None)."""
        return dataclasses.replace(self, **{field.name: factor * getattr(self, field.name) for field in dataclasses.fields(self)
                                            if field.name not in keep and getattr(self, field.name) is not None})  # fmt: skip


@dataclass(frozen=True)
class InRunPass:
    """A pass of a real engine run, timed in the run (its model work, the engine's left out)."""

    shape: PassShape
    prompt_tokens: int  # a decode pass: the tokens fed by the last pass that fed prompts (else 0)
    step_after: int  # a decode pass: which decode pass since (from 1; else 0)
    seconds: float


class CostModel(Protocol):
    def stage_costs(self, shape: PassShape) -> StageCosts:
        """The fixed stages of a pass of `shape`."""

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        """Seconds each routed expert takes on the tokens it received (any array shape; 0 tokens: 0 s,
        the expert does not run)."""

    def idle_s(self, gap_s: float) -> float:
        """How much later a pass ends when the engine had been idle for `gap_s` seconds before it than
        when it follows another pass straight away (caches gone cold, the host waking up)."""

    def wake_s(self, gap_s: float) -> float:
        """How long after a request arrives at an engine idle for `gap_s` seconds (0: one that had not
        idled) the engine puts it into a batch: requests arriving meanwhile join that batch. Of
        `idle_s(gap_s)`, `wake_s(gap_s) - wake_s(0)` is spent here, before the pass."""

    def after_prompts_s(self, prompt_tokens: int, step_after: int, decode_s: float) -> float:
        """How much later a decode pass of `decode_s` seconds ends when it is the `step_after`-th (from 1)
        after a pass that fed `prompt_tokens` prompt tokens than when it follows decode passes only (the
        prompts' work pushed the decode's weights out of the caches)."""

    def in_run_passes(self, granularity: str) -> list[InRunPass]:
        """Passes of real engine runs at `granularity`, timed in them (none where nothing was run):
        the simulator scales the model's work to what they took (qllm.sim.level)."""
