"""The simulator's level: the model's work scaled to what passes of real engine runs took.

A profile times its stages one pass at a time, each pass set up on its own; a run's passes follow one
another, and the stages add up to more or less than those passes take, by an amount that depends on
the granularity, the phase and, at decode, the rows: on the development VM (Intel Xeon) a tiny_olmoe
profile's engine runs took 0.92 of their price on prompts at iteration granularity, and on decode
passes 0.95 with 1 row falling to 0.80 with 17-32 rows; small_mixtral's decode passes went the other
way (0.93 with 1-2 rows, 0.98-0.99 with 8-16). The profile also times the passes of real engine runs
at each granularity (`CostModel.in_run_passes`); the simulated executor prices them as it prices its
own passes at its granularity, the delay after prompts included (their routing drawn apart from the
run's), and scales the model's work, every stage but the engine's own (measured in runs already) and
every expert, by their summed time over their summed price: one level for passes that feed prompts,
and for decode passes one per number of rows, a power of two (the passes with rows nearest it),
interpolated in between over log rows and held flat past the first and the last.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from qllm.sim.cost_model import InRunPass, PassShape, StageCosts
from qllm.sim.routing import UniformRouting

ENGINE_STAGES = ("checkpoint_s", "pass_overhead_s")  # the engine's own work, measured in its runs
MIN_PASSES = 8  # a decode level's passes at least: from fewer, it moves with one pass's noise


@dataclass(frozen=True)
class Level:
    """Factors on the model's work: of passes that feed prompts, and of decode passes by their rows
    (`decode` at `decode_rows`, interpolated over log rows)."""

    prefill: float = 1.0
    decode_rows: tuple[int, ...] = (1,)
    decode: tuple[float, ...] = (1.0,)

    def of(self, shape: PassShape) -> float:
        return self.at_decode(shape.batch_size) if shape.is_decode else self.prefill

    @functools.cache  # few levels, few row counts: the cache stays small
    def at_decode(self, rows: int) -> float:
        return float(np.interp(np.log2(rows), np.log2(self.decode_rows), self.decode))

    def stage_costs(self, shape: PassShape, costs: StageCosts) -> StageCosts:
        """`costs`, a pass of `shape`'s stages as timed, at this level (the engine's stages as they are)."""
        return costs.scaled(self.of(shape), keep=ENGINE_STAGES)


def in_run_level(executor, passes: list[InRunPass]) -> Level:
    """The passes' summed seconds over the summed model work `executor` (a
    qllm.sim.executor.SimExecutor at its granularity, not yet leveled) prices them at: over the passes
    that feed prompts, and over the decode passes whose rows are nearest each power of two (one with
    fewer than MIN_PASSES left out); a phase without passes takes the level of all of them."""
    routing = UniformRouting(executor.model.num_experts, executor.model.top_k, seed=0)  # the run's draws untouched
    seconds, priced = defaultdict(float), defaultdict(float)  # by rows (a power of two) at decode, by 0 at prefill
    counts = defaultdict(int)
    for run_pass in passes:
        plan = executor.plan(run_pass.shape, routing)
        costs = executor.stage_costs(run_pass.shape)
        work_s = plan.total_s - costs.pass_overhead_s - plan.num_checkpoints * costs.checkpoint_s
        delay_s = executor.costs.after_prompts_s(run_pass.prompt_tokens, run_pass.step_after, plan.total_s) if run_pass.step_after else 0.0
        rows = 2 ** round(np.log2(run_pass.shape.batch_size)) if run_pass.shape.is_decode else 0
        seconds[rows] += run_pass.seconds
        priced[rows] += work_s + delay_s
        counts[rows] += 1
    pooled = sum(seconds.values()) / sum(priced.values())
    knots = sorted(rows for rows in priced if rows and counts[rows] >= MIN_PASSES)
    return Level(prefill=seconds[0] / priced[0] if priced[0] else pooled, decode_rows=tuple(knots) or (1,),
                 decode=tuple(seconds[rows] / priced[rows] for rows in knots) or (pooled,))  # fmt: skip
