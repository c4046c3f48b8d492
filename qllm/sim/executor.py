"""The simulated executor: a forward pass that yields where the real one does, on a virtual clock.

A pass is laid out when it starts (qllm.sim.plan): its checkpoints in the real executor's order
for the batch's shape and the drawn routing, and the compute time to each from the cost model. A
batch's decode rows and prompt rows (a mixed batch) are two row groups, as the real executor runs
them: attention per group, every other stage once on their packed tokens (`row_group_costs`).
Running it advances the run's virtual clock instead of computing. Each time the pass goes on it
asks the engine (`may_stop`) whether a checkpoint decision could stop it; when none could, it runs
past every checkpoint before the replay's next arrival and stops at the first one after it (or at
its end), in one step, so an idle checkpoint costs nothing. The engine sees the same checkpoints
at the same times either way (tests/test_sim_executor.py).

An engine that has idled (the replay waited for an arrival) wakes up slower, as the cost model
prices it after so long (`CostModel.idle_s`: the host waking up, caches gone cold): first it looks
at its queue later than the arrival (`CostModel.wake_s`: requests arriving meanwhile join its batch,
as on the real engine, where the replay's sleep overshoots and the first submission runs cold),
then its pass starts late by the rest of the delay (`SimExecutor.woken`); so
do the decode passes after one that fed prompts (`CostModel.after_prompts_s`: the prompts' work pushed
the decode's weights out of the caches, and the steps after it refill them). Where the cost model
holds passes timed in real engine runs at the executor's granularity, the model's work is scaled to
what they took (qllm.sim.level).

Nothing is computed: the tokens it returns are placeholders (`PLACEHOLDER_TOKEN`, not a token id).
KV is taken in blocks from a pool as the real executor takes it (qllm.kv, bookkeeping only). At
each checkpoint the pass reports (`SimPassState`) the bytes the real pass would hold there,
estimated from shapes (qllm.sim.held): counted, never allocated; and inside an MoE block, the
tokens the drawn routing sent to each of its experts.

Catch-up merge (qllm.sim.catch_up): `catch_up` runs a pass's plan cut after its last layer and
returns its rows; a pass sent such rows at a checkpoint goes on with the merged pass's plan from its
next layer boundary on, and reports holding them as the real pass does (waiting at a layer
boundary, then as one more row group).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Protocol

import numpy as np
from transformers import PretrainedConfig

from qllm.executor import Checkpoint, ForwardPass, check_catch_up, check_granularity
from qllm.kv import BlockPool, SequenceKV
from qllm.real.row_groups import rows_by_phase
from qllm.sequence import Sequence
from qllm.sim.cost_model import CostModel, PassShape, StageCosts
from qllm.sim.catch_up import CatchUpPlan, MergedPlan, SimCaughtUp, SimRows, row_group_costs, widest
from qllm.sim.held import held_bytes
from qllm.sim.level import Level, in_run_level
from qllm.sim.plan import AT_BOUNDARY, IN_MOE, ExpertPlan, WholeLayerPlan
from qllm.sim.routing import UniformRouting
from qllm.sim.shape import ModelShape

PLACEHOLDER_TOKEN = -1  # what a simulated pass "generates": outside every vocabulary, never model output


class SimulatedClock(Protocol):
    """The run's virtual clock, shared with the replay that submits requests and the recorder."""

    def now(self) -> float: ...

    def advance_to(self, t_s: float) -> None:
        """Move time forward to `t_s`."""

    def next_arrival_s(self) -> float:
        """When the next request not yet submitted arrives (inf: none will)."""

    wake_up_s: Callable[[float], float]  # set to SimExecutor.woken: the replay's wait for an arrival ends that late


class SimExecutor:
    def __init__(
        self,
        model_config: PretrainedConfig,
        clock: SimulatedClock,
        cost_model: Callable[[ModelShape], CostModel],
        granularity: str = "layer",
        experts_per_checkpoint: int = 1,
        seed: int = 0,
        kv_block_size: int = 16,
    ) -> None:
        """`cost_model` builds the cost model for the model's shape (a `hardware` config, partial)."""
        check_granularity(granularity, experts_per_checkpoint)
        self.config = model_config
        self.model = ModelShape.of(model_config)
        self.num_layers = self.model.num_layers
        self.kv_pool = BlockPool(kv_block_size, self.model.kv_bytes_per_token)
        self.costs = cost_model(model=self.model)
        self.clock = clock
        self.granularity = granularity
        self.experts_per_checkpoint = experts_per_checkpoint
        self.routing = UniformRouting(self.model.num_experts, self.model.top_k, seed)
        self.num_sparse_layers = sum(self.model.sparse_layers)
        self.expert_costs = ExpertCostTable(self.costs)
        self._costs_by_shape: dict[PassShape, StageCosts] = {}
        self._plans_by_shape: dict[PassShape, WholeLayerPlan] = {}
        self.wake_delay_s = 0.0  # what the next pass starts late by, after the engine idled (`woken`)
        self.prompt_tokens_before = 0  # prompt tokens fed by the last pass that fed any
        self.decode_passes_after = 0  # decode passes started since
        self.level = Level()  # the stages as timed: 1 at both phases
        if clock is not None:
            clock.wake_up_s = self.woken
        passes = self.costs.in_run_passes(granularity)
        if passes:  # scaled to what passes of real runs took (qllm.sim.level)
            self.level = in_run_level(self, passes)
            self._costs_by_shape.clear()
            self._plans_by_shape.clear()

    def woken(self, idle_s: float) -> float:
        """The engine idled `idle_s` seconds until an arrival: how long after it the engine looks at its
        queue (`CostModel.wake_s`), and the rest of the delay for its pass (a request's first token
        comes `idle_s(idle_s)` later than straight after work, where it too waits `wake_s(0)`)."""
        wake_s = self.costs.wake_s(idle_s)
        self.wake_delay_s = max(0.0, self.costs.idle_s(idle_s) - (wake_s - self.costs.wake_s(0.0)))
        return wake_s

    def new_kv(self) -> SequenceKV:
        return SequenceKV(self.kv_pool)

    def forward(
        self, batch: list[Sequence], may_stop: Callable[[], bool] | None = None
    ) -> ForwardPass:
        """The pass over `batch` (see the module docstring); without `may_stop`, it stops at every checkpoint."""
        groups = self._row_groups(batch)
        return self._start(self.groups_plan(groups), groups, self.num_layers, may_stop)

    def catch_up(
        self, batch: list[Sequence], num_layers: int, may_stop: Callable[[], bool] | None = None
    ) -> ForwardPass:
        """`batch` through layers 0..num_layers-1 (qllm.executor.Executor.catch_up)."""
        check_catch_up(num_layers, self.num_layers)
        groups = self._row_groups(batch)
        return self._start(CatchUpPlan(self.groups_plan(groups), num_layers), groups, num_layers, may_stop)

    def _start(self, plan, groups: list[SimRows], num_layers: int, may_stop: Callable[[], bool] | None) -> ForwardPass:
        state = SimPassState(self)
        return ForwardPass(simulated_pass(self.clock, self, plan, groups, num_layers, may_stop, state), state)

    def _row_groups(self, batch: list[Sequence]) -> list[SimRows]:
        """The batch's rows as the real executor lays them out: decode rows and prompt rows attend
        apart, so a mixed batch (a policy's `mixed_batches`) is two groups."""
        return [self._rows([batch[row] for row in rows]) for rows in rows_by_phase(batch)]

    def _rows(self, batch: list[Sequence]) -> SimRows:
        num_new_tokens = tuple(s.num_new_tokens for s in batch)
        key_len = max(s.num_tokens for s in batch)
        shape = PassShape(len(batch), max(num_new_tokens), key_len, sum(num_new_tokens))
        table_width = self.kv_pool.blocks_for(key_len)  # the cache's block tables
        return SimRows(tuple(s.kv for s in batch), num_new_tokens, shape, len(batch) * table_width)

    def after_prompts_s(self, groups: list[SimRows], plan) -> float:
        """What a pass starting now over `groups` adds, as the k-th decode pass since the last pass that
        fed prompts, for those prompts (a pass that feeds prompts adds nothing, and counts from it)."""
        prompt_tokens = sum(group.shape.num_real_tokens for group in groups if not group.shape.is_decode)
        if prompt_tokens:
            self.prompt_tokens_before, self.decode_passes_after = prompt_tokens, 0
            return 0.0
        self.decode_passes_after += 1
        before, step = self.prompt_tokens_before, self.decode_passes_after
        return self.costs.after_prompts_s(before, step, plan.total_s) if before else 0.0

    def merged_plan(self, before, groups: list[SimRows], layer: int) -> MergedPlan:
        """The plan of a pass whose rows were `before`'s until the end of `layer` and are `groups` after it."""
        return MergedPlan(before, self.groups_plan(groups), layer)

    def groups_plan(self, groups: list[SimRows]) -> ExpertPlan | WholeLayerPlan:
        """The plan of a pass over row groups: each group's attention, the rest on their packed tokens."""
        if len(groups) == 1:
            return self.plan(groups[0].shape)
        shapes = [group.shape for group in groups]
        costs = row_group_costs(self.stage_costs, shapes)
        if self.granularity == "expert":
            tokens = self.routing.tokens_per_expert(self.num_sparse_layers, sum(s.num_real_tokens for s in shapes))
            return ExpertPlan(self.model, costs, tokens, self.experts_s(tokens, widest(shapes)), self.experts_per_checkpoint)
        return WholeLayerPlan.of(self.model, costs, self.granularity)

    def held_bytes(self, groups: list[SimRows], waiting: list[SimRows], kind: int) -> int:
        """What the real pass holds at a checkpoint of `kind` with these row groups, and rows sent to
        it that wait for its next layer boundary: each group's own tensors and its share of the packed
        ones (qllm.sim.held is linear in the real tokens), waiting rows as at a layer boundary."""
        return sum(held_bytes(self.model, g.shape, g.table_slots, kind) for g in groups) + \
            sum(held_bytes(self.model, w.shape, w.table_slots, AT_BOUNDARY) for w in waiting)  # fmt: skip

    def plan(self, shape: PassShape, routing: UniformRouting | None = None) -> ExpertPlan | WholeLayerPlan:
        """The checkpoints of a pass of `shape` and the compute time to each, with routing drawn now
        (from `routing`, else the executor's own)."""
        if self.granularity == "expert":
            tokens = (routing or self.routing).tokens_per_expert(self.num_sparse_layers, shape.num_real_tokens)
            return ExpertPlan(self.model, self.stage_costs(shape), tokens, self.experts_s(tokens, shape), self.experts_per_checkpoint)
        plan = self._plans_by_shape.get(shape)
        if plan is None:  # layers called whole do not depend on the routing: one plan per shape
            plan = self._plans_by_shape[shape] = WholeLayerPlan.of(self.model, self.stage_costs(shape), self.granularity)
        return plan

    def stage_costs(self, shape: PassShape) -> StageCosts:
        """The cost model's stages of a pass of `shape` (at the executor's level)."""
        costs = self._costs_by_shape.get(shape)
        if costs is None:  # shapes recur (the decode steps of a batch): each is costed once
            costs = self._costs_by_shape[shape] = self.level.stage_costs(shape, self.costs.stage_costs(shape))
        return costs

    def experts_s(self, tokens: np.ndarray, shape: PassShape) -> np.ndarray:
        """The routed experts' seconds, by the tokens each received, in a pass of `shape` (at the executor's level)."""
        level = self.level.of(shape)
        return self.expert_costs(tokens) if level == 1.0 else level * self.expert_costs(tokens)


class ExpertCostTable:
    """A routed expert's seconds by the tokens it received, tabulated from the cost model as larger
    counts are met: a pass's routing is hundreds of small counts, each costed by one lookup."""

    def __init__(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model
        self.table = np.zeros(0)  # seconds, indexed by tokens received

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        needed = int(tokens.max()) + 1
        if needed > len(self.table):
            self.table = self.cost_model.expert_s(np.arange(max(needed, 2 * len(self.table))))
        return self.table[tokens]


class SimPassState:
    """A simulated pass's report (qllm.executor.PassState) at the checkpoint it stopped at: what the
    real pass would hold there (`SimExecutor.held_bytes`: its row groups, and rows sent to it that wait
    for its next layer boundary), and inside an MoE block the plan's drawn routing."""

    __slots__ = ("executor", "plan", "groups", "waiting", "layer", "kind")

    def __init__(self, executor: SimExecutor) -> None:
        self.executor = executor
        self.plan = None  # the pass's plan at the checkpoint (a merged pass's after rows were sent to it)
        self.groups: list[SimRows] = []  # the pass's row groups there
        self.waiting: list[SimRows] = []  # rows sent to it that have not joined it yet
        self.layer: int | None = None
        self.kind: int | None = None  # None: not stopped at a checkpoint (not started, or ended)

    def stop_at(self, layer: int, kind: int, plan, groups: list[SimRows], waiting: list[SimRows]) -> None:
        self.layer, self.kind, self.plan, self.groups, self.waiting = layer, kind, plan, groups, waiting

    def held_bytes(self) -> int:
        return 0 if self.kind is None else self.executor.held_bytes(self.groups, self.waiting, self.kind)

    @property
    def routed_tokens(self) -> list[int] | None:
        return self.plan.received(self.layer) if self.kind == IN_MOE else None


def simulated_pass(
    clock: SimulatedClock, executor: SimExecutor, plan, groups: list[SimRows], num_layers: int,
    may_stop: Callable[[], bool] | None, state: SimPassState,
) -> Generator[Checkpoint, SimCaughtUp | None, list[int] | SimCaughtUp]:
    """Run `plan` on `clock` for layers 0..num_layers-1 (see the module docstring), recording in
    `state` where it stops, with which row groups, and which rows wait to join it. Rows sent at a
    checkpoint (`SimCaughtUp`) wait for the layer's end, then join."""
    for group in groups:
        group.start()
    waiting: list[SimRows] = []  # rows sent to the pass, until its next layer boundary
    merged_after = -1  # the layer at whose end they join
    is_handed_over = False  # a catch-up pass's rows leave in flight
    clock.advance_to(clock.now() + executor.wake_delay_s)  # none but after the engine idled
    executor.wake_delay_s = 0.0
    clock.advance_to(clock.now() + executor.after_prompts_s(groups, plan))
    try:
        origin_s = clock.now()  # when the pass would have started, had it never been set aside
        next_index = 0
        while True:
            done_s = plan.ends_s[next_index - 1] if next_index else 0.0
            if clock.now() != origin_s + done_s:  # it was set aside, and later work ran
                origin_s = clock.now() - done_s
            if next_index == plan.num_checkpoints:
                break
            if may_stop is None or may_stop():
                stop = next_index
            elif origin_s + plan.total_s < clock.next_arrival_s():  # nothing can intervene: on to the end
                break
            else:
                stop = first_after_arrival(plan.ends_s, next_index, origin_s, clock.next_arrival_s())
                if stop == plan.num_checkpoints:
                    break
            clock.advance_to(origin_s + plan.ends_s[stop])
            next_index = stop + 1
            checkpoint, kind = plan.checkpoint(stop)
            if waiting and checkpoint.layer > merged_after:  # past the boundary: they are row groups of the pass
                groups, waiting = groups + waiting, []
            state.stop_at(checkpoint.layer, kind, plan, groups, waiting)  # what the real pass would hold here
            rows = yield checkpoint
            if rows is not None:  # they join after this layer: its end, then the merged pass's layers
                waiting, merged_after = waiting + list(rows.groups), checkpoint.layer  # the pass's now (or released)
                if rows.num_layers != checkpoint.layer + 1 or rows.num_layers >= num_layers:
                    raise ValueError(f"rows run through layers 0..{rows.num_layers - 1} cannot join a pass "
                                     f"inside layer {checkpoint.layer} of {num_layers}")  # fmt: skip
                plan = executor.merged_plan(plan, groups + waiting, checkpoint.layer)
            del rows
        clock.advance_to(origin_s + plan.total_s)
        groups, waiting = groups + waiting, []
        if num_layers < executor.num_layers:
            is_handed_over = True
            return SimCaughtUp(tuple(groups), num_layers)
        for group in groups:
            group.commit()
        return [PLACEHOLDER_TOKEN] * sum(len(group.kvs) for group in groups)
    finally:
        state.kind = None  # an ended pass holds nothing
        if not is_handed_over:
            for group in groups + waiting:
                group.release()


def first_after_arrival(ends_s: np.ndarray, first: int, origin_s: float, arrival_s: float) -> int:
    """The first checkpoint from `first` on that the pass reaches at or after `arrival_s` (the replay
    submits the request there), or len(ends_s) when the pass ends first."""
    last = len(ends_s)
    index = max(first, int(np.searchsorted(ends_s, arrival_s - origin_s)))
    while index > first and origin_s + ends_s[index - 1] >= arrival_s:  # the very sums the clock will hold
        index -= 1
    while index < last and origin_s + ends_s[index] < arrival_s:
        index += 1
    return index
