"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


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
