"""The simulator's level: the model's work scaled to what passes of real engine runs took.

A profile times its stages one pass at a time, each pass set up on its own; a run's passes follow one
another, and the stages add up to more or less than those passes take, by an amount that depends on
the granularity, the phase and the rows: on the development VM (Intel Xeon), at iteration
granularity, a tiny_mixtral profile's engine runs took 1.01 of their price on prompts of one row and
1.11 on prompts of 2-4 rows, and on decode passes 1.00 with 1 row falling to 0.88 with 17-32 rows;
small_mixtral's decode passes went the other way (0.93 with 1-2 rows, 0.98-0.99 with 8-16). The
profile also times the passes of real engine runs at each granularity (`CostModel.in_run_passes`);
the simulated executor prices them as it prices its own passes at its granularity, the delay after
prompts included (their routing drawn apart from the run's), and scales the model's work, every stage
but the engine's own (measured in runs already) and every expert, by their summed time over their
summed price: per phase, one level per number of rows, a power of two (the passes with rows nearest
it), interpolated in between over log rows and held flat past the first and the last. A pass that took
more than OUTLIER times its price is left out, as `fit` leaves out such samples: the core taken by
something else for a moment is the machine, not the pass (a CI machine's tiny test profile, two prompt
passes at each granularity, priced every prompt pass at iteration granularity 47x its time: a spike).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from qllm.sim.cost_model import InRunPass, PassShape, StageCosts
from qllm.sim.profiled import OUTLIER
from qllm.sim.routing import UniformRouting

ENGINE_STAGES = ("checkpoint_s", "pass_overhead_s")  # the engine's own work, measured in its runs
MIN_PASSES = 8  # passes of a phase and rows that set a level, at least: from fewer, it moves with one pass's noise


@dataclass(frozen=True)
class ByRows:
    """A level by a pass's rows: `levels` at `rows` (powers of two), interpolated over log rows, flat
    past the first and the last."""

    rows: tuple[int, ...] = (1,)
    levels: tuple[float, ...] = (1.0,)
    _at: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False)  # by rows, as met

    def at(self, rows: int) -> float:
        level = self._at.get(rows)  # asked once a pass: a lookup, not an interpolation
        if level is None:
            level = self._at[rows] = float(np.interp(np.log2(rows), np.log2(self.rows), self.levels))
        return level


@dataclass(frozen=True)
class Level:
    """Factors on the model's work: of passes that feed prompts and of decode passes, by their rows."""

    prefill: ByRows = ByRows()
    decode: ByRows = ByRows()

    def of(self, shape: PassShape) -> float:
        return (self.decode if shape.is_decode else self.prefill).at(shape.batch_size)

    def stage_costs(self, shape: PassShape, costs: StageCosts) -> StageCosts:
        """`costs`, a pass of `shape`'s stages as timed, at this level (the engine's stages as they are)."""
        return costs.scaled(self.of(shape), keep=ENGINE_STAGES)


def in_run_level(executor, passes: list[InRunPass]) -> Level:
    """The passes' summed seconds over the summed model work `executor` (a
    qllm.sim.executor.SimExecutor at its granularity, not yet leveled) prices them at, per phase over
    the passes whose rows are nearest each power of two (rows with fewer than MIN_PASSES passes left
    out; spikes too); a phase without such rows takes the level of all its passes, one without passes
    that of all."""
    routing = UniformRouting(executor.model.num_experts, executor.model.top_k, seed=0)  # the run's draws untouched
    seconds, priced, counts = defaultdict(float), defaultdict(float), defaultdict(int)  # by (decode?, rows)
    for run_pass in passes:
        plan = executor.plan(run_pass.shape, routing)
        costs = executor.stage_costs(run_pass.shape)
        work_s = plan.total_s - costs.pass_overhead_s - plan.num_checkpoints * costs.checkpoint_s
        delay_s = executor.costs.after_prompts_s(run_pass.prompt_tokens, run_pass.step_after, plan.total_s) if run_pass.step_after else 0.0
        price_s = work_s + delay_s
        if run_pass.seconds > OUTLIER * price_s:
            continue
        key = (run_pass.shape.is_decode, 2 ** round(np.log2(run_pass.shape.batch_size)))
        seconds[key] += run_pass.seconds
        priced[key] += price_s
        counts[key] += 1

    def by_rows(decode: bool, fallback: float) -> ByRows:
        keys = sorted(key for key in priced if key[0] == decode)
        if not keys:
            return ByRows(levels=(fallback,))
        counted = [key for key in keys if counts[key] >= MIN_PASSES]
        if not counted:
            return ByRows(levels=(sum(seconds[k] for k in keys) / sum(priced[k] for k in keys),))
        return ByRows(tuple(rows for _, rows in counted), tuple(seconds[key] / priced[key] for key in counted))

    pooled = sum(seconds.values()) / sum(priced.values()) if priced else 1.0  # every pass a spike: the stages as timed
    return Level(prefill=by_rows(False, pooled), decode=by_rows(True, pooled))
