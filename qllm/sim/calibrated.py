"""A cost model scaled to published step times: an analytic model's stage times, each multiplied by one
factor fitted so that the model's whole passes match what someone measured.

The ideal analytic model (qllm.sim.analytic) prices bytes and FLOPs at a GPU's datasheet rates; a
real system runs slower (kernels below peak, Python between them). Given the step times the
paper's authors published for their own prototype (conf/hardware/paper_calibrated.yaml), the
factor is the geometric mean of published / predicted over those steps, so a claim simulated on
both models is a band: the ideal hardware at one end, the authors' measured speed at the other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qllm.sim.cost_model import CostModel, PassShape, StageCosts
from qllm.sim.plan import WholeLayerPlan
from qllm.sim.shape import ModelShape


def whole_pass_s(costs: StageCosts, model: ModelShape) -> float:
    """One pass with every layer called whole and a checkpoint after each (layer granularity), as
    the simulator lays it out."""
    return WholeLayerPlan.of(model, costs, "layer").total_s


class CalibratedCostModel:
    def __init__(self, model: ModelShape, base: Callable[..., CostModel], published: list[dict]) -> None:
        """`base`: the cost model to scale (a `hardware` config, partial); `published`: measured steps,
        each {batch_size, query_len, key_len, seconds, source}."""
        self.base = base(model=model)
        ratios = []
        for step in published:
            shape = PassShape(int(step["batch_size"]), int(step["query_len"]), int(step["key_len"]))
            ratios.append(float(step["seconds"]) / whole_pass_s(self.base.stage_costs(shape), model))
        if not ratios:
            raise ValueError("a calibrated cost model needs at least one published step time")
        self.scale = float(np.exp(np.mean(np.log(ratios))))

    def stage_costs(self, shape: PassShape) -> StageCosts:
        return self.base.stage_costs(shape).scaled(self.scale)

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        return self.scale * self.base.expert_s(tokens)

    def idle_s(self, gap_s: float) -> float:
        return self.scale * self.base.idle_s(gap_s)

    def wake_s(self, gap_s: float) -> float:
        return self.base.wake_s(gap_s)  # the host's time, not the device's

    def after_prompts_s(self, prompt_tokens: int, step_after: int, decode_s: float) -> float:
        return self.base.after_prompts_s(prompt_tokens, step_after, decode_s)  # a share of `decode_s`, already scaled

    def in_run_passes(self, granularity: str) -> list:
        return []  # the published steps set this model's level
