"""Reshape a trace: how many requests, length caps, arrival times and LS/BE classes.

One function for both places a trace is shaped: when it is built from workload data
(harness.traces.build_trace) and when a run loads one with the `trace` group's knobs (harness.traces.workload).
One seed drives every random choice, each from its own numpy stream, so the same arguments give
the same trace.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from harness.traces import arrivals
from qllm.request import DEFAULT_PRIORITY

ARRIVAL_PROCESSES = ("source", "poisson", "gamma")
PROMPT_CAPS = ("truncate", "drop")
# Independent random streams under one seed: numpy default_rng((seed, stream)).
SAMPLE_STREAM, ARRIVAL_STREAM, CLASS_STREAM = 1, 2, 3

log = logging.getLogger(__name__)


def reshape_trace(
    frame: pd.DataFrame,
    *,
    num_requests: int | None = None,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
    prompt_cap: str = "truncate",
    arrival: str = "source",
    rate: float | None = None,
    burstiness: float = 1.0,
    time_scale: float = 1.0,
    ls_fraction: float | None = None,
    seed: int = 0,
    is_shuffled: bool = False,
) -> pd.DataFrame:
    """Apply, in order: length caps, the number of requests, arrivals, classes (see `build_trace`).

    `is_shuffled`: the rows are in random order already, so the first `num_requests` are a sample.
    """
    if prompt_cap not in PROMPT_CAPS:
        raise ValueError(f"prompt_cap must be one of {PROMPT_CAPS}, got {prompt_cap!r}")
    frame = cap_lengths(frame, max_prompt_len, max_output_len, prompt_cap)
    frame = _select_requests(frame, num_requests, seed, is_shuffled)
    frame["arrival_s"] = _arrival_times(frame, arrival, rate, burstiness, time_scale, seed)
    if ls_fraction is not None:
        frame["priority_class"] = arrivals.assign_classes(len(frame), ls_fraction, seed=(seed, CLASS_STREAM))
        frame["priority"] = frame["priority_class"].map(DEFAULT_PRIORITY)
    elif "priority_class" not in frame.columns:
        raise ValueError("ls_fraction=None keeps the source's priority_class, but the source has none")
    elif "priority" not in frame.columns:
        frame["priority"] = frame["priority_class"].map(DEFAULT_PRIORITY)
    return frame


def cap_lengths(
    frame: pd.DataFrame, max_prompt_len: int | None, max_output_len: int | None, prompt_cap: str = "truncate"
) -> pd.DataFrame:
    """Clip output_len to max_output_len; truncate (prompt_ids too) or drop longer prompts."""
    frame = frame.copy()
    if max_output_len is not None:
        frame["output_len"] = frame["output_len"].clip(upper=max_output_len)
    if max_prompt_len is None:
        return frame
    if prompt_cap == "drop":
        too_long = frame["prompt_len"] > max_prompt_len
        log.info("dropped %d requests with prompts over %d tokens", int(too_long.sum()), max_prompt_len)
        return frame[~too_long].reset_index(drop=True)
    frame["prompt_len"] = frame["prompt_len"].clip(upper=max_prompt_len)
    if "prompt_ids" in frame.columns:
        frame["prompt_ids"] = [None if ids is None else list(ids[:max_prompt_len]) for ids in frame["prompt_ids"]]
    return frame


def _select_requests(frame: pd.DataFrame, num_requests: int | None, seed: int, is_shuffled: bool) -> pd.DataFrame:
    """The first rows of timed or already shuffled data; a seeded sample of an untimed table."""
    if num_requests is None:
        return frame
    if num_requests > len(frame):
        raise ValueError(f"asked for {num_requests} requests but the source has only {len(frame)} "
                         "after its filters and caps")
    if is_shuffled or "arrival_s" in frame.columns:
        return frame.head(num_requests).reset_index(drop=True)
    rows = np.random.default_rng((seed, SAMPLE_STREAM)).choice(len(frame), size=num_requests, replace=False)
    return frame.iloc[rows].reset_index(drop=True)


def _arrival_times(
    frame: pd.DataFrame, arrival: str, rate: float | None, burstiness: float, time_scale: float, seed: int
) -> np.ndarray:
    if arrival == "source":
        if "arrival_s" not in frame.columns:
            raise ValueError("this source has no timestamps; use arrival='poisson' or 'gamma' with a rate")
        return arrivals.source_arrivals(frame["arrival_s"].to_numpy(), time_scale)
    if arrival not in ARRIVAL_PROCESSES:
        raise ValueError(f"arrival must be one of {ARRIVAL_PROCESSES}, got {arrival!r}")
    if rate is None:
        raise ValueError(f"arrival={arrival!r} needs a rate (requests per second)")
    if time_scale != 1.0:
        log.warning("time_scale=%s is ignored: it scales only the source's own timestamps", time_scale)
    burstiness = burstiness if arrival == "gamma" else 1.0
    return arrivals.gamma_arrivals(len(frame), rate, burstiness, seed=(seed, ARRIVAL_STREAM))
