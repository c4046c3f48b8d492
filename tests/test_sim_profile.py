"""The profiled cost model: the profile table round-trips, interpolates and extrapolates linearly,
is refused for another model, and `qllm-profile` writes one from the real executor."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from harness.app import compose_config
from harness.engines import RunResources
from qllm.sim.cost_model import PassShape
from qllm.sim.profiled import PHASES, STAGES, ProfiledCostModel, read_profile, write_profile
from qllm.sim.shape import ModelShape
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def tiny_shape() -> ModelShape:
    return ModelShape.of(RunResources(compose_config()).model_config)


def planar(stage_number: int, batch_size: float, length: float) -> float:
    """A stage time linear in batch size and length: what linear interpolation must reproduce anywhere."""
    return 1e-4 * (stage_number + 1) + 2e-5 * batch_size + 3e-6 * length


def synthetic_table() -> pd.DataFrame:
    rows = [
        {"stage": stage, "phase": phase, "batch_size": b, "length": l, "tokens": 0.0,
         "seconds": planar(i, b, l), "samples": 3}
        for (i, stage), phase, b, l in itertools.product(enumerate(STAGES), PHASES, (1, 4, 16), (8, 64))
    ]  # fmt: skip
    rows += [{"stage": "expert", "phase": "any", "batch_size": 0, "length": 0, "tokens": t, "seconds": 1e-4 + 1e-6 * t,
              "samples": 3} for t in (1, 10, 100)]  # fmt: skip
    return pd.DataFrame(rows)


def test_a_profile_round_trips_and_interpolates_linearly(tmp_path, tiny_shape):
    path = tmp_path / "profile.parquet"
    write_profile(synthetic_table(), path, tiny_shape, {"command": "test"})
    table, model, about = read_profile(path)
    assert len(table) == len(synthetic_table()) and about == {"command": "test"} and model["num_layers"] == 4
    costs = ProfiledCostModel(str(path), tiny_shape)
    for batch_size, length in ((4, 64), (2, 30), (10, 8), (32, 200)):  # on the grid, between, beyond
        decode = costs.stage_costs(PassShape(batch_size, 1, length))
        prefill = costs.stage_costs(PassShape(batch_size, length, length))
        for i, stage in enumerate(STAGES):
            expected = planar(i, batch_size, length)
            assert getattr(decode, f"{stage}_s") == pytest.approx(expected)
            assert getattr(prefill, f"{stage}_s") == pytest.approx(expected)
    assert costs.expert_s(np.array([0, 1, 55, 1000])) == pytest.approx([0, 1.01e-4, 1.55e-4, 1.1e-3])


def test_a_profile_of_another_model_is_refused(tmp_path, tiny_shape):
    path = tmp_path / "profile.parquet"
    write_profile(synthetic_table(), path, tiny_shape, {})
    wider = ModelShape.of(RunResources(compose_config("model.config.hidden_size=128")).model_config)
    with pytest.raises(ValueError, match="another model.*hidden_size"):
        ProfiledCostModel(str(path), wider)


def test_qllm_profile_measures_every_stage_of_the_real_executor(tmp_path):
    out = tmp_path / "tiny.parquet"
    run_cli("model.config.num_hidden_layers=2", "repeats=1", f"out={out}", "grid.prefill.batch_size=[1,2]",
            "grid.prefill.length=[1,8]", "grid.decode.batch_size=[1,2]", "grid.decode.length=[8,16]",
            "engine_run.num_requests=24", module="harness.profile_app")  # fmt: skip
    table, model, about = read_profile(out)
    measured = set(zip(table["stage"], table["phase"]))
    assert {(s, p) for s in STAGES if s != "dense_mlp" for p in PHASES} <= measured and ("expert", "any") in measured
    timed = table[table["stage"].isin(["attention", "layer", "pass_end", "expert", "checkpoint", "pass_overhead"])]
    assert (timed["seconds"] > 0).all() and model["num_layers"] == 2 and about["torch_threads"] == 1  # (router and
    # combine are differences of two timed quanta: noise can make one negative; the cost model clips at 0)
    shape = ModelShape.of(RunResources(compose_config("model.config.num_hidden_layers=2")).model_config)
    assert ProfiledCostModel(str(out), shape).stage_costs(PassShape(2, 1, 12)).layer_s > 0
