"""The simulator's level: the model's work scaled to what passes of real engine runs took.

A profile times its stages one pass at a time, each pass set up on its own; a run's passes follow one
another, and the stages add up to more or less than those passes take, by an amount that depends on
the granularity and the phase: on the development VM (Intel Xeon) a tiny_olmoe profile's engine runs
took 0.93 of their price on decode passes and 1.02 on prompts at iteration granularity, 1.07 and 1.04
at expert granularity. The profile also times the passes of real engine runs at each granularity
(`CostModel.in_run_passes`); the simulated executor prices them as it prices its own passes at its
granularity, the delay after prompts included (their routing drawn apart from the run's), and scales
the model's work, every stage but the engine's own (measured in runs already) and every expert, by
their summed time over their summed price, one level for passes that feed prompts and one for decode
passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from qllm.sim.cost_model import InRunPass, PassShape, StageCosts
from qllm.sim.routing import UniformRouting

ENGINE_STAGES = ("checkpoint_s", "pass_overhead_s")  # the engine's own work, measured in its runs


@dataclass(frozen=True)
class Level:
    """Factors on the model's work: of passes that feed prompts, and of decode passes."""

    prefill: float = 1.0
    decode: float = 1.0

    def of(self, shape: PassShape) -> float:
        return self.decode if shape.is_decode else self.prefill

    def stage_costs(self, shape: PassShape, costs: StageCosts) -> StageCosts:
        """`costs`, a pass of `shape`'s stages as timed, at this level (the engine's stages as they are)."""
        return costs.scaled(self.of(shape), keep=ENGINE_STAGES)


def in_run_level(executor, passes: list[InRunPass]) -> Level:
    """Per phase, the passes' summed seconds over the summed model work `executor` (a
    qllm.sim.executor.SimExecutor at its granularity, not yet leveled) prices them at; a phase
    without passes takes the level of all of them."""
    routing = UniformRouting(executor.model.num_experts, executor.model.top_k, seed=0)  # the run's draws untouched
    seconds, priced = {True: 0.0, False: 0.0}, {True: 0.0, False: 0.0}
    for run_pass in passes:
        plan = executor.plan(run_pass.shape, routing)
        costs = executor.stage_costs(run_pass.shape)
        work_s = plan.total_s - costs.pass_overhead_s - plan.num_checkpoints * costs.checkpoint_s
        delay_s = executor.costs.after_prompts_s(run_pass.prompt_tokens, run_pass.step_after, plan.total_s) if run_pass.step_after else 0.0
        seconds[run_pass.shape.is_decode] += run_pass.seconds
        priced[run_pass.shape.is_decode] += work_s + delay_s
    pooled = sum(seconds.values()) / sum(priced.values())
    prefill, decode = (seconds[phase] / priced[phase] if priced[phase] else pooled for phase in (False, True))
    return Level(prefill, decode)
