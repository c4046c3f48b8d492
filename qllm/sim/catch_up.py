"""Catch-up merge on the simulator: a catch-up pass's plan, the merged pass's plan, and their costs.

As in the real executor (qllm/real/executor.py), a catch-up pass runs its rows through a
suspended pass's first layers and hands them over (`SimCaughtUp`) instead of tokens; sent to the
suspended pass, they join it at its next layer boundary. Its plan (`CatchUpPlan`) is the plan of
a whole pass of its shape cut after its last layer: the same checkpoints up to there but that
layer's end, where it stops, with no final norm or LM head. The suspended pass goes on with
`MergedPlan`: its own plan up to the end of the layer it is in, then a mixed pass's remaining
layers (`row_group_costs`: attention per row group, every other stage on their packed real
tokens, as the real executor runs them; qllm.real.row_groups).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qllm.executor import Checkpoint
from qllm.kv import SequenceKV
from qllm.sim.cost_model import PassShape, StageCosts


@dataclass(frozen=True)
class SimRows:
    """Rows of a simulated pass that attend together (one of a real pass's row groups)."""

    kvs: tuple[SequenceKV, ...]
    num_new_tokens: tuple[int, ...]
    shape: PassShape
    table_slots: int  # blocks its cache gathers: rows x the longest block table

    def start(self) -> None:
        """Take the blocks the pass writes, as a real pass's cache does when it is made."""
        for kv, num_new in zip(self.kvs, self.num_new_tokens):
            kv.reserve(kv.num_tokens + num_new)
            kv.is_in_flight = True

    def commit(self) -> None:
        for kv, num_new in zip(self.kvs, self.num_new_tokens):
            kv.num_tokens += num_new

    def release(self) -> None:
        for kv in self.kvs:
            kv.is_in_flight = False


@dataclass(frozen=True)
class SimCaughtUp:
    """A simulated catch-up pass's rows after its last layer (qllm.executor.CaughtUp), still in flight."""

    groups: tuple[SimRows, ...]
    num_layers: int

    def release(self) -> None:
        for group in self.groups:
            group.release()


class CatchUpPlan:
    """`plan` (a whole pass's) cut after layer num_layers-1: that layer's end is the pass's end."""

    def __init__(self, plan, num_layers: int) -> None:
        self.plan = plan
        last = plan.layer_end(num_layers - 1)
        self.ends_s, self.total_s = plan.ends_s[:last], float(plan.ends_s[last])
        self.num_checkpoints = last

    def checkpoint(self, index: int) -> tuple[Checkpoint, int]:
        return self.plan.checkpoint(index)

    def layer_end(self, layer: int) -> int:
        return self.plan.layer_end(layer)

    def received(self, layer: int) -> list[int]:
        return self.plan.received(layer)


class MergedPlan:
    """`before` up to the end of `layer` (the pass's own rows), then `after` (the plan of the pass with
    the rows that joined it) from the next layer on, its times moved to follow on."""

    def __init__(self, before, after, layer: int) -> None:
        self.before, self.after, self.layer = before, after, layer
        self.split, after_split = before.layer_end(layer), after.layer_end(layer)
        self.shift = after_split - self.split  # `after`'s index of a checkpoint past the split
        split_s = float(before.ends_s[self.split])
        self.ends_s = np.concatenate([before.ends_s[: self.split + 1],
                                      after.ends_s[after_split + 1 :] - after.ends_s[after_split] + split_s])  # fmt: skip
        self.total_s = split_s + after.total_s - float(after.ends_s[after_split])
        self.num_checkpoints = len(self.ends_s)

    def checkpoint(self, index: int) -> tuple[Checkpoint, int]:
        return self.before.checkpoint(index) if index <= self.split else self.after.checkpoint(index + self.shift)

    def layer_end(self, layer: int) -> int:
        return self.before.layer_end(layer) if self.before.layer_end(layer) <= self.split else \
            self.after.layer_end(layer) - self.shift  # fmt: skip

    def received(self, layer: int) -> list[int]:
        """Tokens each routed expert of MoE layer `layer` received: up to the split, the pass's own rows'
        routing; after it, the merged pass's."""
        return self.before.received(layer) if layer <= self.layer else self.after.received(layer)


def widest(shapes: list[PassShape]) -> PassShape:
    """Of a pass's row groups, the one with the most real tokens: its MLP half runs every group's
    tokens (row_group_costs)."""
    return max(shapes, key=lambda shape: shape.num_real_tokens)


def row_group_costs(stage_costs: Callable[[PassShape], StageCosts], shapes: list[PassShape]) -> StageCosts:
    """A pass whose rows attend in groups of `shapes` and whose MLP half runs once on their packed real
    tokens, as the real executor runs it (qllm.real.row_groups): each group sets itself up (embeddings,
    masks, rotary: its own pass start) and attends on its own, and with more than one group every
    layer runs in halves (no layer called whole); the MLP half is that of the group with the most
    real tokens fed all of them (the experts read once for all); the pass's end (the LM head) and
    the engine's own work are those of one pass over every row. Pricing those as one group's
    priced a decode batch with a prompt in it 17-29 % under what it takes (tiny_mixtral).
    `stage_costs`: a cost model's, or the simulated executor's cache of it (a batch's decode rows
    recur from step to step)."""
    groups = [stage_costs(shape) for shape in shapes]
    mlp = widest(shapes)
    rows, tokens = sum(shape.batch_size for shape in shapes), sum(shape.num_real_tokens for shape in shapes)
    packed = stage_costs(dataclasses.replace(mlp, real_tokens=tokens))
    every_row = stage_costs(PassShape(rows, 1, max(shape.key_len for shape in shapes), rows))
    engine = stage_costs(dataclasses.replace(mlp, batch_size=rows, real_tokens=tokens))
    attention_s = sum(group.attention_s for group in groups)
    moe_s = max(packed.layer_s - packed.attention_s, 0.0)  # a whole MoE layer less its attention half
    return dataclasses.replace(
        packed, pass_start_s=sum(group.pass_start_s for group in groups), whole_pass_start_s=None,
        attention_s=attention_s, layer_s=attention_s + moe_s, pass_end_s=every_row.pass_end_s,
        checkpoint_s=engine.checkpoint_s, pass_overhead_s=engine.pass_overhead_s,
    )
