"""How steady this machine's speed is: the same decode pass and the same prefill pass of a model,
timed over and over for some minutes, and the median time of each per window.

A profile (`qllm-profile`) fixes the simulator's level at the speed the machine had while it was
measured; a run minutes later meets whatever speed the machine has then. On a shared VM the two can
differ, and no cost model can predict by how much: this benchmark shows by how much, so that a
simulator's error (benchmarks/sim_fidelity.py) can be read against it. It reports, per pass, the
windows' range ((max - min) / median) and the median |deviation| of a window from the median of all
of them: roughly how far a profile and a run made minutes apart differ on this machine.

    taskset -c 1 python benchmarks/machine_drift.py                   # 4 minutes of 10-s windows
    taskset -c 1 python benchmarks/machine_drift.py --minutes 10 --model small_mixtral --out drift.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.app import compose_config
from harness.engines import RunResources
from harness.profiling.profiler import batch_for, timed_quanta_of, warm_up
from qllm.machine import cpu_name
from qllm.real.executor import RealExecutor

PASSES = {"decode": ("decode", [200] * 16), "prefill": ("prefill", [100] * 4)}  # (phase, per-row lengths)


def time_windows(model: str, minutes: float, window_s: float, progress=print) -> pd.DataFrame:
    """A row per window: when it started (s), and each pass's median seconds and count in it."""
    resources = RunResources(compose_config(f"model={model}", "executor=real"))
    executor = RealExecutor(resources.model, "iteration")
    generator = torch.Generator().manual_seed(0)
    warm_up(executor, shapes=list(PASSES.values()), generator=generator)
    rows, start = [], time.perf_counter()
    while time.perf_counter() - start < 60 * minutes:
        opened, seconds = time.perf_counter(), {name: [] for name in PASSES}
        while time.perf_counter() - opened < window_s:
            for name, (phase, lengths) in PASSES.items():  # alternated: both see the same moments
                quanta = timed_quanta_of(executor, batch_for(executor, phase, lengths, generator))
                seconds[name].append(sum(s for _, s, _ in quanta))
        row = {"start_s": opened - start, **{f"{name} ms": 1e3 * np.median(s) for name, s in seconds.items()},
               "passes": len(seconds["decode"])}  # fmt: skip
        progress(f"{row['start_s']:6.0f} s  " + "  ".join(f"{name} {row[f'{name} ms']:.3f} ms" for name in PASSES))
        rows.append(row)
    return pd.DataFrame(rows)


def summary(windows: pd.DataFrame) -> pd.DataFrame:
    """Per pass: the windows' median, min, max, range and median |deviation| from their median."""
    stats = {}
    for name in PASSES:
        ms = windows[f"{name} ms"]
        median = ms.median()
        stats[name] = {"median ms": median, "min ms": ms.min(), "max ms": ms.max(),
                       "range %": 100 * (ms.max() - ms.min()) / median,
                       "median |deviation| %": 100 * (ms / median - 1).abs().median()}  # fmt: skip
    return pd.DataFrame(stats).T


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--model", default="tiny_mixtral", help="a model of the `model` group (random weights)")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--out", type=Path, help="write the per-window table here (CSV)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{cpu_name()}: {args.model}, {args.minutes:g} min in {args.window:g}-s windows, one torch thread")
    windows = time_windows(args.model, args.minutes, args.window)
    print(summary(windows).round(2).to_string())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        windows.to_csv(args.out, index=False)
        print(f"-> {args.out}")
    return windows


if __name__ == "__main__":
    main(sys.argv[1:])
