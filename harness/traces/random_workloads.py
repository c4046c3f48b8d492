"""Workloads drawn at random from a seed: for measuring what was not tuned to (benchmarks/sim_fidelity.py).

A workload is a random choice of arrival process, length distribution, load, LS share, batch limit,
granularity, model and engine. Lengths come from real workload data (ShareGPT ships with the
project; Azure code and conversation, BurstGPT and Mooncake are read from `../shared/data` when it
is there) or a uniform draw; arrivals are Poisson, Gamma with a coefficient of variation of 2-4
(bursty), or a window of a real trace's own timestamps rescaled to the chosen rate. The rate is a
multiple of the engine's capacity on the workload, which the caller measures (`with_rate`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.traces import arrivals
from harness.traces.trace_schema import load_trace
from harness.traces.trace_sources import read_azure, read_burstgpt, read_mooncake
from harness.traces.workload import PROJECT_ROOT
from qllm.request import DEFAULT_PRIORITY

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
ENGINES = ("qllm", "fcfs_rtc", "fcfs_cb", "priority_cb")
MODELS = ("tiny_mixtral", "small_mixtral", "tiny_olmoe")
BATCH_LIMITS = (8, 16, 32)
GRANULARITIES = ("layer", "expert")  # qllm's; the baselines keep their own (iteration)
# Real data with timestamps and lengths, under `data` (the file name) -> its reader.
TIMED_SOURCES = {
    "azure_code": ("azure/AzureLLMInferenceTrace_code.csv", read_azure),
    "azure_conv": ("azure/AzureLLMInferenceTrace_conv.csv", read_azure),
    "burstgpt": ("burstgpt/BurstGPT_1_first400.csv", read_burstgpt),
    "mooncake": ("mooncake/conversation_trace.jsonl", read_mooncake),
}
SHIPPED_LENGTHS = {"sharegpt": "traces/sharegpt_paper_scale.parquet"}  # always there (outputs clipped to 50, as the paper)


@dataclass(frozen=True)
class Limits:
    """How big a drawn workload may get."""

    max_prompt_len: int = 512
    max_output_len: int = 256
    duration_s: float = 12.0  # arrivals span about this long
    min_requests: int = 16
    max_requests: int = 160


@dataclass(frozen=True)
class Workload:
    index: int
    seed: int  # of this workload's own draws (lengths, arrivals, classes)
    model: str
    engine: str
    granularity: str | None  # qllm's checkpoints; None: the engine's own
    batch_limit: int
    lengths: str  # sharegpt | azure_code | azure_conv | burstgpt | mooncake | uniform
    arrival: str  # poisson | gamma | azure_code | azure_conv | burstgpt | mooncake (its timestamps)
    cv: float  # the gaps' coefficient of variation (gamma); 1 for poisson; the source's for real timestamps
    load: float  # rate / capacity
    ls_fraction: float
    rate: float | None = None  # req/s, once the capacity is known

    def describe(self) -> str:
        granularity = f"/{self.granularity}" if self.granularity else ""
        arrival = f"gamma cv {self.cv:.1f}" if self.arrival == "gamma" else self.arrival
        return (f"#{self.index} {self.model} {self.engine}{granularity} B={self.batch_limit} lengths={self.lengths} "
                f"arrivals={arrival} load={self.load:.2f}x LS={self.ls_fraction:.2f}")  # fmt: skip

    def overrides(self) -> list[str]:
        """qllm-bench overrides for the model and engine (the trace is built here, not by Hydra)."""
        engine = f"engine.{self.engine}"
        chosen = [f"model={self.model}", f"engine=[{self.engine}]", f"{engine}.policy.max_batch_size={self.batch_limit}"]
        if self.granularity:
            chosen.append(f"{engine}.granularity={self.granularity}")
        return chosen


def available_sources(data_dir: Path = SHARED_DATA) -> list[str]:
    return [name for name, (file, _) in TIMED_SOURCES.items() if (data_dir / file).is_file()]


def draw_workloads(seed: int, count: int, models=MODELS, engines=ENGINES, data_dir: Path = SHARED_DATA) -> list[Workload]:
    """`count` workloads, each an independent random choice (see the module docstring)."""
    rng = np.random.default_rng(seed)
    timed = available_sources(data_dir)
    length_sources = [*SHIPPED_LENGTHS, *timed, "uniform"]
    workloads = []
    for index in range(count):
        engine = str(rng.choice(engines))
        arrival = str(rng.choice(["poisson", "gamma", *timed]))
        workloads.append(Workload(
            index=index,
            seed=int(rng.integers(2**31)),
            model=str(rng.choice(models)),
            engine=engine,
            granularity=str(rng.choice(GRANULARITIES)) if engine == "qllm" else None,
            batch_limit=int(rng.choice(BATCH_LIMITS)),
            lengths=str(rng.choice(length_sources)),
            arrival=arrival,
            cv=float(rng.uniform(2.0, 4.0)) if arrival == "gamma" else 1.0,
            load=float(np.exp(rng.uniform(np.log(0.3), np.log(2.0)))),
            ls_fraction=float(rng.uniform(0.1, 0.5)),
        ))  # fmt: skip
    return workloads


def length_pool(name: str, limits: Limits, data_dir: Path = SHARED_DATA) -> pd.DataFrame:
    """prompt_len, output_len (and prompt_ids for ShareGPT) rows of a data source to draw from, capped by `limits`."""
    if name in SHIPPED_LENGTHS:
        frame = load_trace(PROJECT_ROOT / SHIPPED_LENGTHS[name])[["prompt_len", "output_len", "prompt_ids"]]
        frame = frame.assign(prompt_ids=[ids[: limits.max_prompt_len] for ids in frame["prompt_ids"]])
    else:
        file, reader = TIMED_SOURCES[name]
        frame = reader(data_dir / file)[["prompt_len", "output_len"]]
    frame = frame[(frame["prompt_len"] >= 1) & (frame["output_len"] >= 1)]
    return frame.assign(prompt_len=frame["prompt_len"].clip(upper=limits.max_prompt_len),
                        output_len=frame["output_len"].clip(upper=limits.max_output_len)).reset_index(drop=True)  # fmt: skip


def draw_trace(workload: Workload, num_requests: int, rate: float, limits: Limits,
               data_dir: Path = SHARED_DATA) -> pd.DataFrame:  # fmt: skip
    """The workload's trace: `num_requests` rows of its lengths, arriving at `rate` req/s by its process."""
    rng = np.random.default_rng(workload.seed)
    if workload.lengths == "uniform":
        pool = pd.DataFrame({"prompt_len": rng.integers(1, limits.max_prompt_len + 1, num_requests),
                             "output_len": rng.integers(1, limits.max_output_len + 1, num_requests)})  # fmt: skip
    else:
        pool = length_pool(workload.lengths, limits, data_dir)
    trace = pool.iloc[rng.integers(0, len(pool), num_requests)].reset_index(drop=True)
    if "prompt_ids" in trace.columns:
        trace["prompt_len"] = [len(ids) for ids in trace["prompt_ids"]]
    trace.insert(0, "arrival_s", arrival_times(workload, num_requests, rate, rng, data_dir))
    trace.insert(0, "request_id", [f"w{workload.index}-{i}" for i in range(num_requests)])
    trace["priority_class"] = arrivals.assign_classes(num_requests, workload.ls_fraction, seed=workload.seed)
    trace["priority"] = trace["priority_class"].map(DEFAULT_PRIORITY)
    return trace


def arrival_times(workload: Workload, num_requests: int, rate: float, rng: np.random.Generator,
                  data_dir: Path) -> np.ndarray:  # fmt: skip
    if workload.arrival in ("poisson", "gamma"):
        burstiness = 1.0 / workload.cv**2  # the gaps' CV is 1 / sqrt(shape)
        return arrivals.gamma_arrivals(num_requests, rate, burstiness, seed=rng.integers(2**31))
    file, reader = TIMED_SOURCES[workload.arrival]
    gaps = np.diff(reader(data_dir / file)["arrival_s"].to_numpy(float))  # the source's own, in order
    start = int(rng.integers(0, len(gaps)))
    window = np.take(gaps, np.arange(start, start + num_requests - 1), mode="wrap")  # a short source wraps around
    if window.sum() <= 0:
        return np.zeros(num_requests)
    window *= (num_requests - 1) / (rate * window.sum())  # the source's own pattern at `rate` on average
    return np.concatenate([[0.0], np.cumsum(window)])


def requests_for(rate: float, limits: Limits) -> int:
    return int(np.clip(round(rate * limits.duration_s), limits.min_requests, limits.max_requests))


def with_rate(workload: Workload, capacity_rps: float) -> Workload:
    return dataclasses.replace(workload, rate=workload.load * capacity_rps)
