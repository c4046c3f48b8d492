"""LS TTFT and preemption latency of QLLM at iteration, layer and expert granularity, in one run.

Same model (conf/model/tiny_mixtral.yaml), same trace (conf/trace/sharegpt_default.yaml: the
shipped ShareGPT trace, 8 LS of 40 requests), same engine (conf/engine/qllm.yaml), only
`granularity` changes; each is replayed in real time through the harness (workload, replay,
recorder, metrics) `--repeats` times, the granularities interleaved, and the samples pooled.

Preemption latency, per LS request that arrives while a BE-only batch is running (a quantum of
a batch with no LS sequence spans its arrival): first_scheduled_s - arrival_s, the time its
prompt waits for that BE quantum to reach a checkpoint, plus the engine's step to schedule it.
LS requests that arrive to an idle engine or behind other LS work are not counted.
`to_checkpoint` is the part of it until that BE quantum ended; the rest is the engine's step.
One layer's time: the median duration of the whole-layer quanta of the layer-granularity runs
(timeline rows with a layer and no expert); each granularity's p50 latency is divided by it.

    python benchmarks/preemption_latency.py [--repeats 3 --threads 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from harness.app import compose_config, warm_up
from qllm.clock import RealClock
from harness.engines import RunResources
from harness.results.metrics import requests_table, timeline_table
from harness.recorder import Recorder
from harness.replay import replay, requests_from_trace
from harness.traces.workload import load_workload

GRANULARITIES = ("iteration", "layer", "expert")


def run_once(cfg, resources: RunResources, requests, granularity: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replay the trace once in real time; the requests and timeline tables."""
    engine_cfg = cfg.engine.qllm.copy()
    engine_cfg.granularity = granularity
    clock = RealClock()
    recorder = Recorder(clock)
    engine = resources.build_engine(engine_cfg, f"qllm-{granularity}", clock, recorder)
    replay(requests, engine, recorder, progress=False)
    classes = {r.request_id: r.priority_class for r in requests}
    slo = OmegaConf.to_container(cfg.slo, resolve=True)
    requests_df = requests_table(requests, recorder, slo, granularity, engine.name)
    return requests_df, timeline_table(recorder, granularity, engine.name, classes)


def preemption_latencies(requests_df: pd.DataFrame, timeline: pd.DataFrame) -> list[tuple[float, float]]:
    """(first_scheduled_s - arrival_s, in-flight quantum's t_end_s - arrival_s) of each LS request
    that arrived during a BE-only quantum: the whole wait, and the part spent reaching the checkpoint."""
    be_only = timeline[timeline["num_ls"] == 0]
    latencies = []
    for row in requests_df[requests_df["priority_class"] == "LS"].itertuples():
        in_flight = be_only[(be_only["t_start_s"] <= row.arrival_s) & (be_only["t_end_s"] > row.arrival_s)]
        if len(in_flight):
            latencies.append((row.first_scheduled_s - row.arrival_s, in_flight["t_end_s"].iloc[0] - row.arrival_s))
    return latencies


def layer_time_s(timelines: list[pd.DataFrame]) -> float:
    """Median duration of whole-layer quanta (a layer, no expert)."""
    quanta = pd.concat(timelines)
    whole_layers = quanta[quanta["layer"].notna() & quanta["expert"].isna()]
    return float(whole_layers["duration_s"].median())


def summarize(results: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]], layer_s: float) -> pd.DataFrame:
    rows = []
    for granularity, runs in results.items():
        ttft = pd.concat([r[r["priority_class"] == "LS"] for r, _ in runs])["ttft_s"].dropna().to_numpy()
        pairs = np.array([x for r, t in runs for x in preemption_latencies(r, t)]).reshape(-1, 2)
        latency, to_checkpoint = pairs[:, 0], pairs[:, 1]
        quanta = pd.concat([t for _, t in runs])
        p50 = float(np.median(latency)) if latency.size else np.nan
        rows.append({
            "granularity": granularity,
            "ls_ttft_p50_ms": 1e3 * np.percentile(ttft, 50),
            "ls_ttft_p99_ms": 1e3 * np.percentile(ttft, 99),
            "n_preempting_ls": latency.size,
            "preempt_p50_ms": 1e3 * p50,
            "preempt_p99_ms": 1e3 * np.percentile(latency, 99) if latency.size else np.nan,
            "to_checkpoint_p50_ms": 1e3 * np.median(to_checkpoint) if latency.size else np.nan,
            "quantum_p50_ms": 1e3 * quanta["duration_s"].median(),
            "preempt_p50_per_layer": p50 / layer_s,
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("granularity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="replays per granularity, pooled")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose_config("engine=[qllm]", "slo=paper")
    requests = requests_from_trace(load_workload(cfg.trace))
    resources = RunResources(cfg)
    warm_up(cfg.engine.qllm, resources, 4)
    results: dict[str, list] = {g: [] for g in GRANULARITIES}
    for _ in range(args.repeats):
        for granularity in GRANULARITIES:
            results[granularity].append(run_once(cfg, resources, requests, granularity))
    layer_s = layer_time_s([t for _, t in results["layer"]])
    print(f"tiny_mixtral, sharegpt_default ({len(requests)} requests), {args.repeats} replays per granularity, "
          f"{torch.get_num_threads()} threads; one layer (median whole-layer quantum): {1e3 * layer_s:.3f} ms")
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 200, "display.max_columns", None):
        print(summarize(results, layer_s))


if __name__ == "__main__":
    main()
