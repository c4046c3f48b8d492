"""Every config of every group instantiates: models, executors, engines, policies, checkpoint
policies, SLOs and traces (experiment presets and launchers: tests/test_experiments.py, test_sweeps.py)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from qllm.clock import RealClock
from harness.engines import RunResources
from qllm.resources import wanted
from harness.recorder import Recorder
from harness.traces.workload import load_workload
from qllm.request import PRIORITY_CLASSES
from qllm.sim.cost_model import PassShape
from qllm.sim.shape import ModelShape
from harness.app import CONF_DIR, compose_config
from tests.helpers import ENGINES


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ("model", "executor", "hardware", "engine", "engine_base", "policy", "checkpoint", "slo", "trace",
                  "experiment"):
        assert options(group), group


@pytest.fixture(scope="module")
def saved_tiny_mixtral(tmp_path_factory):
    """The default model saved to a folder, for the configs that load weights with from_pretrained."""
    folder = tmp_path_factory.mktemp("tiny_mixtral")
    instantiate(compose_config("model.config.num_hidden_layers=1").model).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("option", options("model"))
def test_every_model_config_instantiates(option, saved_tiny_mixtral):
    cfg = compose_config(f"model={option}").model
    model_type = cfg.model_type
    if OmegaConf.is_missing(cfg, "pretrained") or cfg.pretrained is not None:  # weights from the hub: a local copy
        cfg = compose_config(f"model={option}", f"model.pretrained={saved_tiny_mixtral}", "model.device=cpu",
                             "model.dtype=float32").model  # fmt: skip
        model_type = "mixtral"  # the local copy's; the simulator reads the YAML's own architecture (test_sim_app)
    model = instantiate(cfg)
    assert model.config.model_type == model_type and not model.training


@pytest.mark.parametrize("option", options("executor"))
def test_every_executor_config_instantiates(option):
    # The default model: the shipped profile's (measured on the development machine, so this one may be another CPU).
    foreign_ok = ("hardware.allow_foreign_profile=true",) if option == "sim" else ()
    resources = RunResources(compose_config(f"executor={option}", *foreign_ok))
    clock = resources.new_clock()
    executor = functools.partial(resources.executor, **wanted(resources.executor, {"clock": lambda: clock}))
    executor = executor(granularity="layer", experts_per_checkpoint=1)
    assert executor.num_layers == resources.model_config.num_hidden_layers and executor.kv_pool.block_bytes > 0
    assert clock.now() < 1.0


@pytest.mark.parametrize("option", options("hardware"))
def test_every_hardware_config_costs_a_pass(option):
    """Each cost model, built for its own kind of model (the profile's tiny model, or Mixtral-8x7B
    for a GPU), gives positive stage times that grow with the batch."""
    model = "tiny_mixtral" if option == "profiled" else "mixtral_8x7b_4bit"
    foreign_ok = ("hardware.allow_foreign_profile=true",) if option == "profiled" else ()  # the shipped profile's CPU
    resources = RunResources(compose_config("executor=sim", f"hardware={option}", f"model={model}", *foreign_ok))
    cost_model = instantiate(resources.cfg.hardware)(model=ModelShape.of(resources.model_config))
    small, large = (cost_model.stage_costs(PassShape(b, 1, 64)) for b in (1, 16))
    assert all(value > 0 for value in vars(small).values() if value) and large.layer_s > small.layer_s
    assert (np.diff(cost_model.expert_s(np.array([0, 1, 8, 64]))) > 0).all()


@pytest.mark.parametrize("option", ENGINES)
def test_every_engine_config_instantiates(config, resources, option):
    clock = RealClock()
    engine = resources.build_engine(config.engine[option], option, clock, Recorder(clock))
    assert engine.idle() and engine.name == option


@pytest.mark.parametrize("group, package", [("policy", "policy"), ("checkpoint", "checkpoint_policy")])
def test_every_policy_and_checkpoint_config_instantiates(group, package):
    for option in options(group):
        cfg = compose_config("engine=[qllm]", f"{group}@engine.qllm.{package}={option}")
        assert type(instantiate(cfg.engine.qllm[package])).__module__.startswith("qllm.")


def test_every_slo_config_names_each_class():
    for option in options("slo"):
        slo = OmegaConf.to_container(compose_config(f"slo={option}").slo, resolve=True)
        assert set(slo) == set(PRIORITY_CLASSES) and all(set(s) == {"ttft_s", "tpot_s", "e2e_s"} for s in slo.values())


@pytest.mark.parametrize("option", options("trace"))
def test_every_trace_config_loads(option):
    assert len(load_workload(compose_config(f"trace={option}").trace)) > 0
