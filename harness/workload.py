"""The trace a run replays: a trace file, reshaped by the `trace` config group's knobs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import arrivals
from harness.build_trace import ARRIVAL_STREAM, CLASS_STREAM, cap_lengths
from harness.request import DEFAULT_PRIORITY
from harness.trace_schema import load_trace, validate_trace

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str) -> Path:
    """A path as given, else relative to the project root (so the shipped traces load from anywhere)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return PROJECT_ROOT / candidate


def load_workload(cfg) -> pd.DataFrame:
    """Load `cfg.path` and apply, in order: num_requests, length caps, arrivals, LS fraction."""
    path = resolve_path(cfg.path)
    trace = load_trace(path)
    if cfg.get("num_requests") is not None:
        trace = trace.head(cfg.num_requests)
    trace = cap_lengths(trace, cfg.get("max_prompt_len"), cfg.get("max_output_len"))
    if cfg.get("rate") is not None:
        trace["arrival_s"] = arrivals.gamma_arrivals(
            len(trace), cfg.rate, cfg.get("burstiness", 1.0), seed=(cfg.seed, ARRIVAL_STREAM)
        )
    elif cfg.get("time_scale", 1.0) != 1.0:
        trace["arrival_s"] = arrivals.source_arrivals(trace["arrival_s"].to_numpy(), cfg.time_scale)
    if cfg.get("ls_fraction") is not None:
        trace["priority_class"] = arrivals.assign_classes(len(trace), cfg.ls_fraction, seed=(cfg.seed, CLASS_STREAM))
        trace["priority"] = trace["priority_class"].map(DEFAULT_PRIORITY)
    return validate_trace(trace, source=str(path))
