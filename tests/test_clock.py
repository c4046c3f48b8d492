"""The wall clock waits for the GPU on a CUDA device, and only there (qllm/clock.py)."""

from __future__ import annotations

import torch
from hydra.utils import instantiate

from harness.app import compose_config


def test_the_real_clock_waits_for_the_gpu_on_cuda_only(monkeypatch):
    synchronized = []  # no GPU here: record what the clock asks of torch.cuda
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synchronized.append(str(device)))
    cpu_clock = instantiate(compose_config("model.device=cpu").clock)
    cpu_clock.now()
    assert synchronized == []
    cuda_clock = instantiate(compose_config("model.device=cuda").clock)  # the run's clock, as the harness builds it
    cuda_clock.now()
    assert synchronized == ["cuda", "cuda"]  # at its zero, and at each reading
