"""The QLLM engine's headline behaviour on the default trace, measured in one run:

- LS TTFT p50 of the paper's baseline `fcfs_rtc` as a multiple of `qllm`'s (target >= 20x);
- `qllm`'s LS TTFT p99 under load against the p99 of the same LS requests each run alone
  through `qllm` on an idle engine (target <= 2x);
- `qllm`'s throughput (generated tokens / makespan) against `fcfs_cb` (target >= 0.9x).

    python benchmarks/scheduling_behaviour.py [--threads 1] [hydra overrides, e.g. trace.rate=30]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from harness.app import compose_config, run_engine
from harness.engines import RunResources
from harness.replay import requests_from_trace
from harness.workload import load_workload

ENGINES = ("qllm", "fcfs_rtc", "fcfs_cb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/config.yaml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose_config(f"engine=[{','.join(ENGINES)}]", "progress=false", *args.overrides)
    requests = requests_from_trace(load_workload(cfg.trace))
    resources = RunResources(cfg)
    params = {"run_id": "behaviour"}
    summaries = {
        name: run_engine(name, cfg.engine[name], resources, requests, cfg, params)["summary"] for name in ENGINES
    }
    alone = [dataclasses.replace(r, arrival_s=0.0) for r in requests if r.priority_class == "LS"]
    alone_ttft = [
        run_engine("qllm", cfg.engine.qllm, resources, [r], cfg, params)["requests"]["ttft_s"].iloc[0] for r in alone
    ]
    report(summaries, torch.tensor(alone_ttft, dtype=torch.float64), args.threads)


def report(summaries: dict, alone_ttft: torch.Tensor, threads: int) -> None:
    ls = {name: s.set_index("priority_class").loc["LS"] for name, s in summaries.items()}
    every = {name: s.set_index("priority_class").loc["all"] for name, s in summaries.items()}
    alone_p99 = float(torch.quantile(alone_ttft, 0.99))
    print(f"torch threads: {threads}")
    for name in ENGINES:
        print(f"{name:9s} LS TTFT p50 {ls[name].ttft_s_p50 * 1e3:8.2f} ms  p99 {ls[name].ttft_s_p99 * 1e3:8.2f} ms  "
              f"throughput {every[name].throughput_tok_s:7.1f} tok/s")  # fmt: skip
    print(f"qllm LS alone: TTFT p50 {float(alone_ttft.median()) * 1e3:.2f} ms  p99 {alone_p99 * 1e3:.2f} ms")
    print(f"fcfs_rtc / qllm LS TTFT p50:        {ls['fcfs_rtc'].ttft_s_p50 / ls['qllm'].ttft_s_p50:6.1f}x  (target >= 20)")
    print(f"qllm LS TTFT p99 / alone p99:       {ls['qllm'].ttft_s_p99 / alone_p99:6.2f}x  (target <= 2)")
    print(f"qllm / fcfs_cb throughput:          {every['qllm'].throughput_tok_s / every['fcfs_cb'].throughput_tok_s:6.2f}x"
          "  (target >= 0.9)")  # fmt: skip


if __name__ == "__main__":
    main()
