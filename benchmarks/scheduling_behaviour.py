"""The QLLM engine's headline behaviour on the default trace, measured in one run:

- LS TTFT p50 of the paper's baseline `fcfs_rtc` as a multiple of `qllm`'s (target >= 20x);
- `qllm`'s LS TTFT p99 under load against the p99 of the same LS requests each run alone
  through `qllm` on an idle engine (target <= 2x);
- `qllm`'s throughput (generated tokens / makespan) against `fcfs_cb` (target >= 0.95x), at the
  trace's own load and at `--loads` multiples of it (the same arrivals, time-scaled), with each
  engine's throughput as a share of the offered load (the trace's output tokens per second of
  arrivals): a share under 1 means the engine is saturated.

    python benchmarks/scheduling_behaviour.py [--threads 1] [--loads 1 2] [--rounds 5] [hydra overrides, e.g. model=small_mixtral]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from harness.app import compose_config, run_engine
from harness.engines import RunResources
from harness.replay import requests_from_trace
from harness.traces.workload import load_workload

ENGINES = ("qllm", "fcfs_rtc", "fcfs_cb")


def offered_tok_s(requests) -> float:
    """Output tokens the trace asks for per second of its arrivals."""
    span_s = max(r.arrival_s for r in requests) - min(r.arrival_s for r in requests)
    return sum(r.output_len for r in requests) / span_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--loads", type=float, nargs="+", default=[1.0, 2.0],
                        help="offered load as multiples of the trace's own (default: 1 2)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the engines this many times in turn at each load and report medians "
                             "(a busy machine moves one run's throughput by up to 20 %%)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/config.yaml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose_config(f"engine=[{','.join(ENGINES)}]", "progress=false", *args.overrides)
    resources = RunResources(cfg)
    print(f"torch threads: {args.threads}; trace {cfg.trace.name}")
    time_scale = cfg.trace.time_scale
    loaded_ls_p99 = {}
    for load in args.loads:
        cfg.trace.time_scale = time_scale / load
        requests = requests_from_trace(load_workload(cfg.trace))
        params = {"run_id": f"load-{load:g}"}
        rounds = [{name: run_engine(name, cfg.engine[name], resources, requests, cfg, params)["summary"]
                   .set_index("priority_class") for name in ENGINES} for _ in range(args.rounds)]  # fmt: skip
        report(rounds, load, offered_tok_s(requests))
        loaded_ls_p99[load] = statistics.median(r["qllm"].loc["LS"].ttft_s_p99 for r in rounds)
    alone = [dataclasses.replace(r, arrival_s=0.0) for r in requests if r.priority_class == "LS"]
    ttft = [run_engine("qllm", cfg.engine.qllm, resources, [r], cfg, params)["requests"]["ttft_s"].iloc[0] for r in alone]
    alone_p99 = float(torch.quantile(torch.tensor(ttft, dtype=torch.float64), 0.99))
    print(f"\nqllm LS alone: TTFT p50 {float(torch.tensor(ttft).median()) * 1e3:.2f} ms  p99 {alone_p99 * 1e3:.2f} ms")
    for load, p99 in loaded_ls_p99.items():
        print(f"qllm LS TTFT p99 at load x{load:g} / alone p99:  {p99 / alone_p99:6.2f}x  (target <= 2)")


def report(rounds: list[dict], load: float, offered: float) -> None:
    """Each engine's medians over the rounds; the ratios' range over the rounds when there are several."""
    def median(name: str, cls: str, column: str) -> float:
        return statistics.median(r[name].loc[cls][column] for r in rounds)

    def ratio(text: str, top: tuple, bottom: tuple, unit: float, target: str) -> None:
        per_round = [r[top[0]].loc[top[1]][top[2]] / r[bottom[0]].loc[bottom[1]][bottom[2]] for r in rounds]
        spread = f"  (rounds {min(per_round):.2f}-{max(per_round):.2f})" if len(rounds) > 1 else ""
        print(f"{text:30s}{median(*top) / median(*bottom):6.{unit}f}x  (target {target}){spread}")

    print(f"\nload x{load:g}: offered {offered:.0f} tok/s" + (f", medians of {len(rounds)} rounds" if len(rounds) > 1 else ""))
    print(f"{'engine':9s} {'LS TTFT p50':>12s} {'p99':>10s} {'throughput':>12s} {'of offered':>10s}")
    for name in ENGINES:
        throughput = median(name, "all", "throughput_tok_s")
        print(f"{name:9s} {median(name, 'LS', 'ttft_s_p50') * 1e3:9.2f} ms {median(name, 'LS', 'ttft_s_p99') * 1e3:7.2f} ms "
              f"{throughput:7.1f} tok/s {throughput / offered:10.2f}")  # fmt: skip
    ratio("fcfs_rtc / qllm LS TTFT p50:", ("fcfs_rtc", "LS", "ttft_s_p50"), ("qllm", "LS", "ttft_s_p50"), 1, ">= 20")
    ratio("qllm / fcfs_cb throughput:", ("qllm", "all", "throughput_tok_s"), ("fcfs_cb", "all", "throughput_tok_s"), 2,
          ">= 0.95")  # fmt: skip


if __name__ == "__main__":
    main()
