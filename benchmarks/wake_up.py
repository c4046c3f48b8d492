"""What waking up costs a real engine, and how well the simulator prices it: lone requests arriving
at an idle engine, a fixed gap apart, on the real executor (twice) and simulated with and without
the profile's idle delay (`CostModel.idle_s`, measured by `qllm-profile`'s idle probes).

Each request has a prompt of 16-215 tokens and two output tokens, so it is served alone: its TTFT is
one prefill after the engine idled for about the gap. Printed per engine and gap: the mean TTFT of
each real run, of the simulated run with the delay and without it, and the simulated runs' errors
against the mean of the real ones.

    taskset -c 1 python benchmarks/wake_up.py                                  # the shipped profile's model
    taskset -c 1 python benchmarks/wake_up.py --profile profiles/mine.parquet --gaps 0.02 0.5

The profile must come from this machine (`taskset -c 1 qllm-profile` writes the shipped one's place).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from harness.app import compose_config, run_engine
from harness.engines import RunResources
from qllm.request import Request


def lone_requests(gap_s: float, count: int) -> list[Request]:
    return [Request(f"r{i}", 0.01 + gap_s * i, 16 + (37 * i) % 200, 2, "BE", 1) for i in range(count)]


def mean_ttft_s(engine: str, executor: list[str], gap_s: float, count: int) -> float:
    cfg = compose_config(f"engine=[{engine}]", *executor, "progress=false")
    (name, engine_cfg), = cfg.engine.items()
    table = run_engine(name, engine_cfg, RunResources(cfg), lone_requests(gap_s, count), cfg, {"run_id": "0"})["requests"]
    return float(table["ttft_s"].mean())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--profile", default="profiles/tiny_mixtral.parquet", help="a profile of --model from this machine")
    parser.add_argument("--model", default="tiny_mixtral")
    parser.add_argument("--engines", nargs="+", default=["fcfs_cb", "qllm"])
    parser.add_argument("--gaps", nargs="+", type=float, default=[0.01, 0.05, 0.2], help="seconds between arrivals")
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    real = ["executor=real", f"model={args.model}"]
    sim = ["executor=sim", f"model={args.model}", "hardware=profiled", f"hardware.path={args.profile}"]
    rows = []
    for engine in args.engines:
        for gap in args.gaps:
            runs = [mean_ttft_s(engine, real, gap, args.requests) for _ in range(2)]
            with_delay = mean_ttft_s(engine, sim, gap, args.requests)
            without = mean_ttft_s(engine, [*sim, "hardware.wake_up_delay=false"], gap, args.requests)
            mean = np.mean(runs)
            rows.append({"engine": engine, "gap_s": gap, "real_1_ms": 1e3 * runs[0], "real_2_ms": 1e3 * runs[1],
                         "sim_ms": 1e3 * with_delay, "sim_without_delay_ms": 1e3 * without,
                         "error_%": 100 * (with_delay - mean) / mean, "error_without_delay_%": 100 * (without - mean) / mean})  # fmt: skip
            print(f"{engine}, {gap * 1e3:g} ms apart: done", flush=True)
    table = pd.DataFrame(rows)
    print(table.round(2).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
