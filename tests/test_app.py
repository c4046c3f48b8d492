"""The Hydra app end to end, and every config of every group."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from harness.app import run_benchmark
from harness.metrics import REQUESTS_COLUMNS, TIMELINE_COLUMNS
from harness.recorder import Recorder
from harness.clock import RealClock
from harness.results import is_complete
from harness.workload import PROJECT_ROOT, load_workload

CONF = PROJECT_ROOT / "conf"
SUMMARY_COLUMNS = [
    f"{metric}_{stat}" for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s") for stat in ("mean", "p50", "p90", "p99")
] + ["n", "slo_attainment", "goodput_rps", "throughput_tok_s", "throughput_rps", "makespan_s", "priority_class"]
TINY_MODEL = [
    "model.config.vocab_size=32000",
    "model.config.num_hidden_layers=2",
    "model.config.max_position_embeddings=256",
]


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def run_app(tmp_path: Path, overrides: list[str]):
    cfg = compose_config(overrides)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return run_benchmark(cfg, tmp_path, model_name="tiny_mixtral")


def test_replay_through_hf_generate_writes_every_table_with_one_row_per_request(tmp_path):
    overrides = ["engine=[hf_generate]", "trace.num_requests=6", "trace.ls_fraction=0.5", "trace.max_output_len=4", "progress=false",
                 "record_token_ids=true", *TINY_MODEL]  # fmt: skip
    tables = run_app(tmp_path, overrides)
    requests = tables["requests"]
    assert list(requests.columns) == REQUESTS_COLUMNS + ["token_ids"]
    assert len(requests) == 6 and requests["request_id"].is_unique
    assert (requests["status"] == "finished").all()
    assert (requests["generated_len"] == requests["output_len"]).all()
    assert [len(ids) for ids in requests["token_ids"]] == list(requests["output_len"])
    assert set(SUMMARY_COLUMNS) <= set(tables["summary"].columns)
    assert set(tables["summary"]["priority_class"]) == {"LS", "BE", "all"}
    assert list(tables["timeline"].columns) == TIMELINE_COLUMNS
    for name in ("requests", "summary", "timeline"):
        assert (tmp_path / f"{name}.parquet").exists() and (tmp_path / f"{name}.csv").exists()
    assert (tmp_path / "manifest.json").exists() and (tmp_path / "config.yaml").exists()
    assert is_complete(tmp_path)


def test_every_engine_serves_the_same_trace_with_identical_tokens(tmp_path):
    overrides = ["trace.num_requests=5", "trace.max_output_len=3", "progress=false", "record_token_ids=true",
                 *TINY_MODEL]  # fmt: skip
    requests = run_app(tmp_path, overrides)["requests"]
    tokens = requests.pivot(index="request_id", columns="engine", values="token_ids")
    assert set(tokens.columns) == {"qllm", "fcfs_rtc", "fcfs_cb", "priority_cb", "hf_generate"}
    for request_id, row in tokens.iterrows():
        outputs = {engine: [int(t) for t in ids] for engine, ids in row.items()}
        assert all(ids == outputs["hf_generate"] for ids in outputs.values()), (request_id, outputs)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("option", group_options("engine"))
def test_every_engine_config_instantiates(option):
    cfg = compose_config([f"engine=[{option}]", *TINY_MODEL])
    model = instantiate(cfg.model)
    engine = instantiate(cfg.engine[option], model=model, recorder=Recorder(RealClock()), name=option)
    assert engine.idle() and engine.name == option


@pytest.mark.parametrize("option", group_options("trace"))
def test_every_trace_config_loads(option):
    cfg = compose_config([f"trace={option}"])
    assert len(load_workload(cfg.trace)) > 0


@pytest.mark.parametrize("group", ["model", "slo"])
def test_every_config_in_the_group_composes(group):
    for option in group_options(group):
        cfg = compose_config([f"{group}={option}"])
        assert cfg[group] is not None
