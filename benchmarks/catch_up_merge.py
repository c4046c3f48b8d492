"""What catch-up merge saves: the same trace replayed on QLLM with `catch_up_merge` off and on, at
layer and expert granularity, real executor, in one run; ratios (on / off) of throughput, LS TTFT
p50/p99 and BE TPOT p50/mean, per repeat, so the spread shows the machine's noise.

Without the merge, an LS prompt that preempts a BE decode pass inside layer L runs its own whole
pass, then the BE pass resumes: layers L+1.. run twice (once for the prompt, once for the decode
rows), each reading every expert's weights. With it, the prompt runs layers 0..L alone and joins
the BE pass, whose remaining layers run once for both (qllm/real/executor.py): the preemption costs
L + 1 layers of solo work instead of a whole extra pass.

Model: conf/model/small_mixtral.yaml (8 layers, 8 experts) by default. Trace: the shipped ShareGPT
trace (conf/trace/sharegpt_default.yaml: prompts up to 64 tokens, outputs mostly 64), its first
`--requests` requests with Poisson arrivals at `--rate` and `--ls-fraction` of them LS, so BE decode
batches run most of the time and LS prompts land in them; batch limit B = 16. Each (granularity,
merge) point is replayed `--repeats` times in real time, the two merge settings back to back in
alternating order (about 2 minutes on an idle core with the defaults). Pin it to one core:

    taskset -c 0 python benchmarks/catch_up_merge.py [--repeats 3 --requests 48 --rate 6 --ls-fraction 0.25]

`merges` counts the merged passes (a resumed quantum of kind "mixed"); LS TTFT is what the merge costs
(the prompt's remaining layers run with the decode rows, its LM head with theirs), throughput and BE
TPOT what it saves. `cpu_s` is the process's CPU time over the replay (it sleeps while idle): the
engine's work, which a core shared with other processes inflates less than wall time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from harness.app import compose_config, warm_up
from harness.engines import RunResources
from harness.results.metrics import requests_table, timeline_table
from harness.recorder import Recorder
from harness.replay import replay, requests_from_trace
from harness.traces.workload import load_workload
from qllm.clock import RealClock

GRANULARITIES = ("layer", "expert")


def engine_config(cfg, granularity: str, merge: bool):
    """The run's qllm engine at `granularity`, merging or not."""
    engine_cfg = cfg.engine.qllm.copy()
    engine_cfg.granularity, engine_cfg.catch_up_merge = granularity, merge
    return engine_cfg


def run_once(cfg, resources: RunResources, requests, granularity: str, merge: bool) -> dict:
    """Replay the trace once in real time; its throughput, LS TTFT, BE TPOT and merges."""
    engine_cfg = engine_config(cfg, granularity, merge)
    clock = RealClock()
    recorder = Recorder(clock)
    engine = resources.build_engine(engine_cfg, f"qllm-{granularity}-{'merge' if merge else 'plain'}", clock, recorder)
    cpu_start_s = time.process_time()
    replay(requests, engine, recorder, progress=False)  # sleeps while idle: its CPU time is the engine's work
    cpu_s = time.process_time() - cpu_start_s
    classes = {r.request_id: r.priority_class for r in requests}
    df = requests_table(requests, recorder, {}, "run", engine.name)
    timeline = timeline_table(recorder, "run", engine.name, classes)
    assert (df["status"] == "finished").all(), df["status"].value_counts()
    ls, be = df[df["priority_class"] == "LS"], df[df["priority_class"] == "BE"]
    span_s = df["finish_s"].max() - df["arrival_s"].min()
    return {
        "throughput_tok_s": df["generated_len"].sum() / span_s,
        "cpu_s": cpu_s,
        "ls_ttft_p50_s": ls["ttft_s"].quantile(0.5),
        "ls_ttft_p99_s": ls["ttft_s"].quantile(0.99),
        "be_tpot_p50_s": be["tpot_s"].quantile(0.5),
        "be_tpot_mean_s": be["tpot_s"].mean(),
        "preemptions": int(df["preemptions"].sum()),
        "merges": int(((timeline["kind"] == "mixed") & timeline["is_resume"].astype(bool)).sum()),
        "quanta": len(timeline),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_mixtral")
    parser.add_argument("--requests", type=int, default=48, help="the trace's first N requests")
    parser.add_argument("--rate", type=float, default=6.0, help="requests/s: Poisson arrivals redrawn (trace.rate)")
    parser.add_argument("--ls-fraction", type=float, default=0.25, help="share of LS requests (trace.ls_fraction)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose_config("engine=[qllm]", f"model={args.model}", f"trace.num_requests={args.requests}",
                         f"trace.rate={args.rate}", f"trace.ls_fraction={args.ls_fraction}",
                         "engine.qllm.policy.max_batch_size=16")  # fmt: skip
    requests = requests_from_trace(load_workload(cfg.trace))
    resources = RunResources(cfg)
    for granularity in GRANULARITIES:
        for merge in (False, True):
            warm_up(engine_config(cfg, granularity, merge), resources, 4)
    rows, started = [], time.monotonic()
    for repeat in range(args.repeats):
        for granularity in GRANULARITIES:
            order = (False, True) if repeat % 2 == 0 else (True, False)  # neither setting always runs first
            for merge in order:
                rows.append({"repeat": repeat, "granularity": granularity, "merge": merge,
                             **run_once(cfg, resources, requests, granularity, merge)})  # fmt: skip
    runs = pd.DataFrame(rows)
    num_ls = sum(r.priority_class == "LS" for r in requests)
    print(f"{args.model}, sharegpt_default first {len(requests)} requests ({num_ls} LS) at {args.rate} req/s, "
          f"B = 16, {args.repeats} repeats, {torch.get_num_threads()} thread(s), {time.monotonic() - started:.0f} s")
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 200, "display.max_columns", None):
        print(runs.groupby(["granularity", "merge"]).mean(numeric_only=True).drop(columns="repeat"))
        print("\nratio merge on / off, per repeat (min .. median .. max):")
        print(ratios(runs))


def ratios(runs: pd.DataFrame) -> pd.DataFrame:
    """Per granularity and metric, on/off of each repeat's pair, as min, median and max over repeats."""
    metrics = ["throughput_tok_s", "cpu_s", "ls_ttft_p50_s", "ls_ttft_p99_s", "be_tpot_p50_s", "be_tpot_mean_s"]
    rows = []
    for granularity, runs_at in runs.groupby("granularity"):
        on = runs_at[runs_at["merge"]].set_index("repeat")[metrics]
        off = runs_at[~runs_at["merge"]].set_index("repeat")[metrics]
        ratio = on / off
        for metric in metrics:
            values = ratio[metric].to_numpy()
            rows.append({"granularity": granularity, "metric": metric, "min": values.min(),
                         "median": float(np.median(values)), "max": values.max()})  # fmt: skip
    return pd.DataFrame(rows).set_index(["granularity", "metric"])


if __name__ == "__main__":
    main()
