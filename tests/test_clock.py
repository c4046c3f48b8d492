"""The wall clock waits for the GPU on a CUDA device, and only there, and a real run's time starts
with its replay (qllm/clock.py)."""

from __future__ import annotations

import time

import pytest
import torch
from hydra.utils import instantiate
from tqdm.auto import tqdm

import harness.replay
from harness.app import compose_config, run_engine
from harness.engines import RunResources
from qllm.request import Request


def test_the_real_clock_waits_for_the_gpu_on_cuda_only(monkeypatch):
    synchronized = []  # no GPU here: record what the clock asks of torch.cuda
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synchronized.append(str(device)))
    cpu_clock = instantiate(compose_config("model.device=cpu").clock)
    cpu_clock.now()
    assert synchronized == []
    cuda_clock = instantiate(compose_config("model.device=cuda").clock)  # the run's clock, as the harness builds it
    cuda_clock.now()
    assert synchronized == ["cuda", "cuda"]  # at its zero, and at each reading


class SlowBar(tqdm):
    """The harness's progress bar, 100 ms slow to set up (a process's first one took 0.5 ms)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        time.sleep(0.1)


@pytest.mark.parametrize("slow", ["engine", "progress_bar"])
def test_a_real_runs_arrivals_count_from_the_replays_start_not_its_set_up(monkeypatch, slow):
    """What comes before the replay's loop (building the engine, its progress bar) takes 100 ms here:
    longer than B arrives after A. Counted on the run's clock, A and B would start together."""
    cfg = compose_config("engine=[fcfs_rtc]", "executor=real", "progress=false")
    resources = RunResources(cfg)
    build = resources.build_engine

    def slow_build(*args, **kwargs):
        engine = build(*args, **kwargs)
        time.sleep(0.1)
        return engine

    if slow == "engine":
        monkeypatch.setattr(resources, "build_engine", slow_build)
    else:
        monkeypatch.setattr(harness.replay, "tqdm", SlowBar)
    requests = [Request(request_id="A", arrival_s=0.0, prompt_len=8, output_len=100, priority_class="BE", priority=1),
                Request(request_id="B", arrival_s=0.03, prompt_len=8, output_len=2, priority_class="BE", priority=1)]  # fmt: skip
    (name, engine_cfg), = cfg.engine.items()
    table = run_engine(name, engine_cfg, resources, requests, cfg, {"run_id": "0"})["requests"].set_index("request_id")
    # A runs alone (run to completion) from time zero; B, arriving while it runs, waits for its batch's end.
    assert table.loc["A", "ttft_s"] < 0.03
    assert table.loc["B", "first_token_s"] > table.loc["A", "finish_s"]
