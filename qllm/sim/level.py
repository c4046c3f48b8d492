"""The simulator's level: the model's work scaled to what passes of real engine runs took
(`hardware.in_run_level=true`; off by default: on seeds 63-67 of benchmarks/sim_fidelity.py the stages
as timed came closer to the suite's real runs, docs/reproducing.md, "The runs between the stages").

A profile times its stages one pass at a time, each pass set up on its own; a run's passes follow one
another, and the stages add up to more or less than those passes take, by an amount that depends on the
granularity and the phase (on the development VM, Intel Xeon, three tiny_mixtral profiles of the same
shapes, measured back to back: prompt passes took 0.96-1.12 of the stages' price, decode passes
0.93-1.07, each granularity's decode level within 0.07 across the three). The profile also times the
passes of real engine runs at each granularity (`CostModel.in_run_passes`); the simulated executor
prices them as it prices its own passes at its granularity, the delay after prompts included (their
routing drawn apart from the run's), and scales the model's work, every stage but the engine's own
(measured in runs already) and every expert, by their summed time over their summed price, one level
per phase. A pass that took more than OUTLIER times its price is left out, as `fit` leaves out such
samples: the core taken by something else for a moment is the machine, not the pass (a CI machine's
tiny test profile, two prompt passes at each granularity, priced every prompt pass at iteration
granularity 47x its time: a spike).

One level per phase, not per number of rows: each batch limit's run takes its own seconds, and a
level per rows carried the machine's speed in those seconds. Three tiny_olmoe profiles measured back
to back put the 16-row decode level at iteration granularity at 1.11, 0.89 and 0.81, and the 2-row
one at 0.94, 0.94 and 0.80, so that a leveled 2-row decode pass at 512 keys was priced 5.14, 4.52 and
4.17 ms, where the stages alone priced it 5.47, 4.82 and 5.19 (docs/reproducing.md, "One level per
phase"). The stages' own fits carry how a pass's cost moves with its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from qllm.sim.cost_model import InRunPass, PassShape, StageCosts
from qllm.sim.profiled import OUTLIER
from qllm.sim.routing import UniformRouting

ENGINE_STAGES = ("checkpoint_s", "pass_overhead_s")  # the engine's own work, measured in its runs


@dataclass(frozen=True)
class Level:
    """Factors on the model's work: of passes that feed prompts and of decode passes."""

    prefill: float = 1.0
    decode: float = 1.0

    def of(self, shape: PassShape) -> float:
        return self.decode if shape.is_decode else self.prefill

    def stage_costs(self, shape: PassShape, costs: StageCosts) -> StageCosts:
        """`costs`, a pass of `shape`'s stages as timed, at this level (the engine's stages as they are)."""
        return costs.scaled(self.of(shape), keep=ENGINE_STAGES)


def in_run_level(executor, passes: list[InRunPass]) -> Level:
    """The passes' summed seconds over the summed model work `executor` (a
    qllm.sim.executor.SimExecutor at its granularity, not yet leveled) prices them at, per phase
    (spikes left out); a phase without passes takes the level of all."""
    routing = UniformRouting(executor.model.num_experts, executor.model.top_k, seed=0)  # the run's draws untouched
    seconds, priced = {False: 0.0, True: 0.0}, {False: 0.0, True: 0.0}  # by decode?
    for run_pass in passes:
        plan = executor.plan(run_pass.shape, routing)
        costs = executor.stage_costs(run_pass.shape)
        work_s = plan.total_s - costs.pass_overhead_s - plan.num_checkpoints * costs.checkpoint_s
        delay_s = executor.costs.after_prompts_s(run_pass.prompt_tokens, run_pass.step_after, plan.total_s) if run_pass.step_after else 0.0
        price_s = work_s + delay_s
        if run_pass.seconds > OUTLIER * price_s:
            continue
        seconds[run_pass.shape.is_decode] += run_pass.seconds
        priced[run_pass.shape.is_decode] += price_s
    # the level of every pass (1 where every pass was a spike: the stages as timed)
    pooled = sum(seconds.values()) / sum(priced.values()) if any(priced.values()) else 1.0
    prefill, decode = (seconds[phase] / priced[phase] if priced[phase] else pooled for phase in (False, True))
    return Level(prefill, decode)
