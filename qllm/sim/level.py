"""The simulator's level: the model's work scaled to what passes of real engine runs took.

A profile times its stages one pass at a time, each pass set up on its own; a run's passes follow one
another, and the stages add up to more or less than those passes take, by an amount that depends on
the granularity: on the development VM (Intel Xeon) a tiny_olmoe run's decode passes at iteration
granularity took 1/1.07-1/1.10 of their price (benchmarks/passes_in_run.py), and a fresh profile's
engine runs give levels of 0.95 (iteration), 0.96 (layer) and 1.07 (expert granularity). The
profile also times the passes of real engine runs at each granularity (`CostModel.in_run_passes`); the
simulated executor prices them as it prices its own passes at its granularity, the delay after prompts
included (their routing drawn apart from the run's), and scales the model's work, every stage but the
engine's own (measured in runs already) and every expert, by their summed time over their summed price.
"""

from __future__ import annotations

import numpy as np

from qllm.sim.cost_model import CostModel, InRunPass, PassShape, StageCosts
from qllm.sim.routing import UniformRouting

ENGINE_STAGES = ("checkpoint_s", "pass_overhead_s")  # the engine's own work, measured in its runs


def in_run_level(executor, passes: list[InRunPass]) -> float:
    """The passes' summed seconds over the summed model work `executor` prices them at (a
    qllm.sim.executor.SimExecutor, at its granularity)."""
    routing = UniformRouting(executor.model.num_experts, executor.model.top_k, seed=0)  # the run's draws untouched
    priced_s = 0.0
    for run_pass in passes:
        plan = executor.plan(run_pass.shape, routing)
        costs = executor.stage_costs(run_pass.shape)
        work_s = plan.total_s - costs.pass_overhead_s - plan.num_checkpoints * costs.checkpoint_s
        delay_s = executor.costs.after_prompts_s(run_pass.prompt_tokens, run_pass.step_after, plan.total_s) if run_pass.step_after else 0.0
        priced_s += work_s + delay_s
    return sum(run_pass.seconds for run_pass in passes) / priced_s


class LeveledCostModel:
    """`base` with the model's work (every stage but the engine's, and every expert) times `level`."""

    def __init__(self, base: CostModel, level: float) -> None:
        self.base, self.level = base, level

    def stage_costs(self, shape: PassShape) -> StageCosts:
        return self.base.stage_costs(shape).scaled(self.level, keep=ENGINE_STAGES)

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        return self.level * self.base.expert_s(tokens)

    def idle_s(self, gap_s: float) -> float:
        return self.base.idle_s(gap_s)  # measured in engine runs

    def after_prompts_s(self, prompt_tokens: int, step_after: int, decode_s: float) -> float:
        return self.base.after_prompts_s(prompt_tokens, step_after, decode_s)  # a share of `decode_s`, already scaled

    def in_run_passes(self, granularity: str) -> list[InRunPass]:
        return []  # taken up in the level
