"""The trace a run replays: a trace file, reshaped by the `trace` config group's knobs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.traces.reshape import reshape_trace
from harness.traces.trace_schema import load_trace, validate_trace

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str) -> Path:
    """A path as given, else relative to the project root (so the shipped traces load from anywhere)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return PROJECT_ROOT / candidate


def load_workload(cfg) -> pd.DataFrame:
    """Load `cfg.path` and reshape it (harness.traces.reshape): length caps, num_requests, then arrivals
    redrawn at `rate` (Gamma with `burstiness`) or the file's own scaled by `time_scale`, then the
    LS fraction."""
    path = resolve_path(cfg.path)
    trace = reshape_trace(
        load_trace(path),
        num_requests=cfg.get("num_requests"),
        max_prompt_len=cfg.get("max_prompt_len"),
        max_output_len=cfg.get("max_output_len"),
        arrival="source" if cfg.get("rate") is None else "gamma",
        rate=cfg.get("rate"),
        burstiness=cfg.get("burstiness", 1.0),
        time_scale=cfg.get("time_scale", 1.0),
        ls_fraction=cfg.get("ls_fraction"),
        seed=cfg.get("seed", 0),
    )
    return validate_trace(trace, source=str(path))
