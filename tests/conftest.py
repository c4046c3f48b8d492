"""Shared pytest fixtures: the composed config, the run's resources, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from harness.app import compose_config, run_benchmark
from harness.engines import RunResources
from tests.helpers import APP_SHRINK, SHRINK


@pytest.fixture(scope="session")
def config():
    """conf/config.yaml composed once and shrunk (tests.helpers.SHRINK): a tiny model, every engine."""
    return compose_config(*SHRINK)


@pytest.fixture(scope="session")
def resources(config) -> RunResources:
    """The shrunk config's model and executor factory, built once for the session."""
    return RunResources(config)


@pytest.fixture(scope="session")
def tiny_model(resources):
    return resources.model


@pytest.fixture
def run_app(tmp_path):
    """`qllm-bench` in this process: the real config composed with Hydra's node and `overrides` on
    the app's tiny model (tests.helpers.APP_SHRINK), writing into `run_dir` (default: tmp_path)."""

    def run(*overrides: str, run_dir: Path | None = None) -> dict:
        run_dir = run_dir or tmp_path
        cfg = compose_config(*APP_SHRINK, *overrides, f"hydra.run.dir={run_dir}", with_hydra=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return run_benchmark(cfg, run_dir, model_name="tiny_mixtral")

    return run


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real workload data folder (../shared/data beside the repo, or $QLLM_SHARED_DATA); skip if absent."""
    path = Path(os.environ.get("QLLM_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set QLLM_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors: extra intra-op threads only add synchronization, which stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
