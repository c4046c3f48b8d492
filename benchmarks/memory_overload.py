"""The memory budget under overload: the default trace at twice its load through `qllm`, first
unbounded (to see what it would take), then with `memory_budget_mb` set to a share of that peak,
so admission and preemption must respect it. Printed from each run's timeline (gauges after every
quantum):

- peak KV allocated + suspended pass state, against the budget (must stay <= 1);
- KV held / needed: blocks handed out against the tokens they hold (what paged storage wastes in
  its last, partly filled block per sequence), time-weighted over the run and at the peak;
- throughput and LS TTFT p50 with and without the budget.

    python benchmarks/memory_overload.py [--load 2] [--share 0.5] [hydra overrides]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from harness.app import compose_config, run_engine
from harness.engines import RunResources
from harness.replay import requests_from_trace
from harness.traces.workload import load_workload


def held_over_needed(timeline: pd.DataFrame) -> tuple[float, float]:
    """(time-weighted mean, at the peak allocation) of KV allocated / KV the stored tokens need."""
    busy = timeline[timeline["kv_needed_bytes"] > 0]
    weights = busy["duration_s"].to_numpy(float)
    allocated, needed = busy["kv_allocated_bytes"].to_numpy(float), busy["kv_needed_bytes"].to_numpy(float)
    peak = int(np.argmax(allocated))
    return float(np.average(allocated / needed, weights=weights)), float(allocated[peak] / needed[peak])


def describe(name: str, out: dict, budget_bytes: float | None) -> None:
    timeline, summary = out["timeline"], out["summary"].set_index("priority_class")
    held = timeline["kv_allocated_bytes"] + timeline["suspended_bytes"]
    mean_ratio, peak_ratio = held_over_needed(timeline)
    finished = int(summary.loc["all", "n_finished"])
    print(f"{name}: {finished}/{int(summary.loc['all', 'n'])} finished, "
          f"{summary.loc['all', 'throughput_tok_s']:.0f} tok/s, LS TTFT p50 {summary.loc['LS', 'ttft_s_p50'] * 1e3:.1f} ms")
    print(f"  peak KV reserved {timeline['kv_reserved_bytes'].max() / 2**20:.3f} MiB, allocated "
          f"{timeline['kv_allocated_bytes'].max() / 2**20:.3f} MiB, suspended {timeline['suspended_bytes'].max() / 2**20:.3f}"
          f" MiB; allocated + suspended {held.max() / 2**20:.3f} MiB"
          + (f" = {held.max() / budget_bytes:.3f} of the budget" if budget_bytes else ""))  # fmt: skip
    print(f"  KV held / needed: {mean_ratio:.3f} time-weighted, {peak_ratio:.3f} at the peak allocation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", type=float, default=2.0, help="offered load as a multiple of the trace's (default 2)")
    parser.add_argument("--share", type=float, default=0.5,
                        help="the budget as a share of the unbounded run's peak allocated + suspended (default 0.5)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/config.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = compose_config("engine=[qllm]", "progress=false", *args.overrides)
    cfg.trace.time_scale = cfg.trace.time_scale / args.load
    requests = requests_from_trace(load_workload(cfg.trace))
    resources = RunResources(cfg)
    print(f"{cfg.trace.name} at x{args.load:g} its load ({len(requests)} requests), qllm, "
          f"KV blocks of {cfg.executor.kv_block_size} tokens")
    unbounded = run_engine("qllm", cfg.engine.qllm, resources, requests, cfg, {"run_id": "unbounded"})
    describe("unbounded", unbounded, None)
    peak = (unbounded["timeline"]["kv_allocated_bytes"] + unbounded["timeline"]["suspended_bytes"]).max()
    budget_mb = float(args.share * peak / 2**20)
    engine_cfg = cfg.engine.qllm.copy()
    engine_cfg.memory_budget_mb = budget_mb
    bounded = run_engine("qllm", engine_cfg, resources, requests, cfg, {"run_id": "bounded"})
    describe(f"engine.qllm.memory_budget_mb={budget_mb:.4f}", bounded, budget_mb * 2**20)


if __name__ == "__main__":
    main()
