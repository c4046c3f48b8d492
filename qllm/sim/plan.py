"""One simulated pass laid out in advance: its checkpoints, in the real executor's order, and the
compute time from the pass's start to each.

The order is the real executor's (qllm/real/executor.py): at `layer` granularity one checkpoint
per decoder layer; at `expert` granularity, per layer, one after its attention half
(`expert=ATTENTION`), then one after every `experts_per_checkpoint` of the units that received
tokens (routed experts in ascending order, then a shared expert numbered `num_experts`), the last
one ending the layer; a dense layer's MLP runs whole (`expert=None`); at `iteration`, none.
Costs go where the real pass spends them: the pass's start in its first quantum, a block's router in
its first expert group and its output and residual add in its last, the final norm and LM head after
the last checkpoint, and the engine's own work between passes and after every checkpoint.

At expert granularity every layer is one row of stages [attention, unit 0, unit 1, ...] (a unit
that does not run costs nothing); a checkpoint ends the stages since the previous one, so the time
to it is a running sum over the flattened rows, read at the checkpoints' positions. Most passes
never stop inside (nothing arrives and nothing outranks them): their total is computed first, and
the layout only when a stop needs it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from qllm.executor import ATTENTION, Checkpoint
from qllm.sim.cost_model import StageCosts
from qllm.sim.shape import ModelShape

AT_BOUNDARY, AFTER_ATTENTION, IN_MOE, AFTER_MLP = 0, 1, 2, 3  # what a pass holds at a checkpoint (qllm.sim.held)


def with_overheads(costs: StageCosts, ends: np.ndarray) -> np.ndarray:
    """Running sums of stage times to each checkpoint, plus the engine's work and the pass's start.
    The engine's own work comes before what it leads to: between passes before the first stage, at a
    checkpoint before the next one."""
    return ends + costs.pass_overhead_s + costs.pass_start_s + costs.checkpoint_s * np.arange(len(ends))


def total_s(costs: StageCosts, work_s: float, num_checkpoints: int) -> float:
    """The whole pass: its stages' `work_s`, the engine's work, the pass's start and end."""
    return costs.pass_overhead_s + costs.pass_start_s + work_s + costs.checkpoint_s * num_checkpoints + costs.pass_end_s


@dataclass(frozen=True)
class WholeLayerPlan:
    """`layer` granularity (a checkpoint after each layer) or `iteration` (none)."""

    ends_s: np.ndarray  # [checkpoints]: compute seconds from the pass's start to each
    total_s: float

    @classmethod
    def of(cls, model: ModelShape, costs: StageCosts, granularity: str) -> WholeLayerPlan:
        """Each layer called whole: an MoE layer costs `layer_s`, a dense one its two halves."""
        costs = costs.with_whole_layers()
        layer_s = np.where(model.sparse_layers, costs.layer_s, costs.attention_s + costs.dense_mlp_s)
        if granularity == "iteration":
            return cls(np.zeros(0), total_s(costs, float(layer_s.sum()), 0))
        return cls(with_overheads(costs, np.cumsum(layer_s)), total_s(costs, float(layer_s.sum()), len(layer_s)))

    @property
    def num_checkpoints(self) -> int:
        return len(self.ends_s)

    def checkpoint(self, index: int) -> tuple[Checkpoint, int]:
        """The checkpoint, and what the pass holds there (qllm.sim.held)."""
        return Checkpoint(layer=index), AT_BOUNDARY

    def layer_end(self, layer: int) -> int:
        """The index of the checkpoint that ends `layer` (layer granularity)."""
        return layer


class ExpertPlan:
    """`expert` granularity, from each routed expert's tokens and seconds in each MoE layer
    ([sparse layers, experts]; an expert that received no token does not run)."""

    def __init__(self, model: ModelShape, costs: StageCosts, routed_tokens: np.ndarray, expert_s: np.ndarray,
                 group_size: int) -> None:  # fmt: skip
        self.model, self.costs, self.group_size = model, costs, group_size
        self.routed_tokens, self.expert_s = routed_tokens, expert_s
        units_run = np.count_nonzero(routed_tokens, axis=1) + model.has_shared_expert
        num_sparse, num_dense = len(routed_tokens), model.num_layers - len(routed_tokens)
        self.num_checkpoints = model.num_layers + int(np.sum(-(-units_run // group_size))) + num_dense
        work_s = (model.num_layers * costs.attention_s + float(expert_s.sum()) + num_dense * costs.dense_mlp_s
                  + num_sparse * (costs.router_s + costs.combine_s + model.has_shared_expert * costs.shared_expert_s))  # fmt: skip
        self.total_s = total_s(costs, work_s, self.num_checkpoints)

    @property
    def ends_s(self) -> np.ndarray:
        return self._layout[0]

    def checkpoint(self, index: int) -> tuple[Checkpoint, int]:
        """The checkpoint, and what the pass holds there (qllm.sim.held)."""
        _, positions, row_width, last_unit = self._layout
        layer, column = divmod(int(positions[index]), row_width)
        if column == 0:
            return Checkpoint(layer=layer, expert=ATTENTION), AFTER_ATTENTION
        expert = column - 1 if self.model.sparse_layers[layer] else None
        return Checkpoint(layer=layer, expert=expert), AFTER_MLP if column == last_unit[layer] else IN_MOE

    def layer_end(self, layer: int) -> int:
        """The index of the checkpoint that ends `layer` (its last unit's)."""
        _, positions, row_width, _ = self._layout
        return int(np.searchsorted(positions // row_width, layer, side="right")) - 1

    def received(self, layer: int) -> list[int]:
        """Tokens each routed expert of MoE layer `layer` received."""
        return self.routed_tokens[int(np.sum(self.model.sparse_layers[:layer]))].tolist()

    @functools.cached_property
    def _layout(self) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
        """(ends_s, each checkpoint's position in the flattened rows, the row width, each layer's last column)."""
        model, costs, num_experts = self.model, self.costs, self.routed_tokens.shape[1]
        num_units = num_experts + model.has_shared_expert
        stages = np.zeros((model.num_layers, 1 + num_units))  # [layers, attention + units]
        runs = np.zeros(stages.shape, dtype=bool)  # the stages that run
        stages[:, 0], runs[:, 0] = costs.attention_s, True
        sparse, dense = model.sparse_layer_indices, model.dense_layer_indices
        routed = slice(1, 1 + num_experts)
        stages[sparse, routed], runs[sparse, routed] = self.expert_s, self.routed_tokens > 0
        if model.has_shared_expert:
            stages[sparse, -1], runs[sparse, -1] = costs.shared_expert_s, True
        stages[dense, 1], runs[dense, 1] = costs.dense_mlp_s, True
        last = num_units - np.argmax(runs[:, :0:-1], axis=1)  # each layer's last stage
        stages[sparse, np.argmax(runs[sparse, 1:], axis=1) + 1] += costs.router_s
        stages[sparse, last[sparse]] += costs.combine_s
        # A checkpoint after the attention half, after every group_size-th unit that runs, and after the last.
        is_checkpoint = runs
        if self.group_size > 1:
            is_checkpoint = runs.copy()
            is_checkpoint[:, 1:] &= np.cumsum(runs[:, 1:], axis=1) % self.group_size == 0
            is_checkpoint[np.arange(model.num_layers), last] = True
        positions = np.flatnonzero(is_checkpoint)
        ends = with_overheads(costs, np.cumsum(stages.ravel())[positions])
        return ends, positions, stages.shape[1], last
