"""How fast the simulator replays the paper-scale trace: simulated requests per wall-clock second.

The trace is traces/sharegpt_paper_scale.parquet (2,000 ShareGPT requests, prompts up to 1,024
tokens, outputs up to 50), replayed on the simulated Mixtral-8x7B (32 layers, 8 experts, top-2)
with the A100 cost model, QLLM at expert granularity (a checkpoint after every attention half
and every expert: about 290 per pass) and the baselines, at rates from under to past capacity.
Only the replay is timed (the engine, the simulator, the recorder), not loading the trace or
writing tables; in wall-clock and in CPU seconds (on a shared machine the process's own time:
a busy neighbour inflates the wall-clock figure).

    taskset -c 1 python benchmarks/sim_speed.py
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from harness.app import compose_config
from harness.engines import RunResources
from harness.recorder import Recorder
from harness.replay import replay, requests_from_trace
from harness.traces.workload import load_workload

PAPER_SCALE = ("experiment=paper_ttft_vs_rate", "progress=false")  # the paper-scale trace, model, cost model, SLO
RUNS = (("qllm", "expert"), ("qllm", "layer"), ("fcfs_rtc", "iteration"), ("priority_cb", "iteration"))


def replay_once(rate: float, engine: str, granularity: str) -> dict:
    granularity_override = f"engine.{engine}.granularity={granularity}"
    cfg = compose_config(*PAPER_SCALE, f"trace.rate={rate}", f"engine=[{engine}]", granularity_override)
    resources = RunResources(cfg)
    requests = requests_from_trace(load_workload(cfg.trace))
    clock = resources.new_clock()
    recorder = Recorder(clock)
    built = resources.build_engine(cfg.engine[engine], engine, clock, recorder)
    start, start_cpu = time.perf_counter(), time.process_time()
    replay(requests, built, recorder, progress=False)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    return {"engine": engine, "granularity": granularity, "rate": rate, "requests": len(requests),
            "quanta": len(recorder.quanta), "simulated_s": clock.now(), "wall_s": wall_s, "cpu_s": cpu_s,
            "req_per_wall_s": len(requests) / wall_s, "req_per_cpu_s": len(requests) / cpu_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=(1, 2, 4, 8))
    args = parser.parse_args()
    rows = [replay_once(rate, engine, granularity) for rate in args.rates for engine, granularity in RUNS]
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format="%.1f"))
    expert = table[table["granularity"] == "expert"]
    print(f"\nQLLM at expert granularity: {expert['req_per_wall_s'].min():.0f}-{expert['req_per_wall_s'].max():.0f} "
          f"simulated requests per wall-clock second ({expert['req_per_cpu_s'].min():.0f}-"
          f"{expert['req_per_cpu_s'].max():.0f} per CPU second); all runs together: "
          f"{table['requests'].sum() / table['wall_s'].sum():.0f} per wall-clock second")  # fmt: skip


if __name__ == "__main__":
    main()
