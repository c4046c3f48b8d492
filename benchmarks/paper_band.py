"""The paper's claims at its own scale, SIMULATED, as a band between two A100 cost models, and how the
headline ratio grows with the trace's length and the batch limit.

Each point replays the paper-scale ShareGPT trace (traces/sharegpt_paper_scale.parquet: prompts up
to 1,024 tokens, outputs clipped to 50 as in the authors' examples; 20 % LS; Poisson arrivals;
the 3 s LS TTFT SLO) through `qllm` and the FCFS run-to-completion baseline on the simulated
Mixtral-8x7B NF4, once per cost model: `a100_80gb` (ideal: datasheet bandwidth and FLOPs) and
`paper_calibrated` (the same, slowed to the authors' published step time). Per cost model, trace
length (its first N requests) and batch limit it prints, over the rates:

- LS TTFT, baseline / qllm, from the mean LS TTFT at each rate: the mean over rates and the largest;
- the highest rate at which QLLM meets the LS SLO for 99 % of LS requests, and the baseline's best
  attainment;
- LS turnaround, baseline / qllm, the largest over rates;
- throughput, qllm / baseline, the lowest over rates.

The paper's own numbers (one A100, 256-request benchmark, batch 16-32): LS TTFT 65.5x lower on
average (up to 101.6x), LS SLO met up to 7 req/s, LS turnaround up to 12.8x lower, throughput not
reduced.

    python benchmarks/paper_band.py                                # the comparable workload: 256 requests, batch 32
    python benchmarks/paper_band.py --requests 128 256 512 2000 --batch 16 32   # the growth table
    python benchmarks/paper_band.py --batch 16 32 --qllm qllm_one_phase         # QLLM in the paper's mode
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from harness.app import compose_config, run_engine
from harness.engines import RunResources
from harness.replay import requests_from_trace
from harness.traces.workload import load_workload

HARDWARE = ("a100_80gb", "paper_calibrated")
BASELINE = "fcfs_rtc"
PAPER = {"LS TTFT lower, mean": "65.5x", "LS TTFT lower, max": "101.6x", "QLLM meets the LS SLO up to": "7 req/s",
         "baseline's best LS SLO attainment": "fails", "LS turnaround lower, max": "12.8x",
         "throughput, qllm / baseline, min": "not reduced"}  # fmt: skip


def summaries(hardware: str, num_requests: int, batch_limit: int, rate: float, engines=("qllm", BASELINE),
              overrides=()) -> pd.DataFrame:  # fmt: skip
    """Each engine's summary rows on the first `num_requests` paper-scale requests arriving at `rate`,
    every engine at batch limit `batch_limit` (and any further Hydra `overrides`)."""
    cfg = compose_config("experiment=paper_ttft_vs_rate", f"hardware={hardware}", f"engine=[{','.join(engines)}]",
                         f"trace.num_requests={num_requests}", f"trace.rate={rate}", "progress=false",
                         *(f"engine.{engine}.policy.max_batch_size={batch_limit}" for engine in engines),
                         *overrides)  # fmt: skip
    resources = RunResources(cfg)
    requests = requests_from_trace(load_workload(cfg.trace))
    params = {"run_id": f"{hardware}-{num_requests}-{batch_limit}-{rate}", "rate": rate}
    return pd.concat([run_engine(name, engine_cfg, resources, requests, cfg, params)["summary"]
                      for name, engine_cfg in cfg.engine.items()], ignore_index=True)  # fmt: skip


def claims(summary: pd.DataFrame, qllm: str = "qllm") -> dict:
    """The paper's claims, computed over the rates of one (cost model, trace length, batch limit), for
    the QLLM engine named `qllm` against the baseline."""
    ls = summary[summary["priority_class"] == "LS"].set_index(["rate", "engine"])
    everyone = summary[summary["priority_class"] == "all"].set_index(["rate", "engine"])
    rates = sorted(summary["rate"].unique())
    ttft = [ls.loc[(r, BASELINE), "ttft_s_mean"] / ls.loc[(r, qllm), "ttft_s_mean"] for r in rates]
    turnaround = [ls.loc[(r, BASELINE), "e2e_s_mean"] / ls.loc[(r, qllm), "e2e_s_mean"] for r in rates]
    throughput = [everyone.loc[(r, qllm), "throughput_tok_s"] / everyone.loc[(r, BASELINE), "throughput_tok_s"]
                  for r in rates]  # fmt: skip
    meets = [r for r in rates if ls.loc[(r, qllm), "slo_attainment"] >= 0.99]
    return {"LS TTFT lower, mean": sum(ttft) / len(ttft), "LS TTFT lower, max": max(ttft),
            "QLLM meets the LS SLO up to": max(meets) if meets else 0.0,
            "baseline's best LS SLO attainment": max(ls.loc[(r, BASELINE), "slo_attainment"] for r in rates),
            "LS turnaround lower, max": max(turnaround), "throughput, qllm / baseline, min": min(throughput)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--requests", type=int, nargs="+", default=[256], help="trace lengths (its first N requests)")
    parser.add_argument("--batch", type=int, nargs="+", default=[32], help="batch limits (B)")
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--hardware", nargs="+", default=list(HARDWARE))
    parser.add_argument("--qllm", default="qllm", help="the QLLM engine compared with the baseline (e.g. qllm_one_phase)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    for hardware in args.hardware:
        for num_requests in args.requests:
            for batch_limit in args.batch:
                summary = pd.concat([summaries(hardware, num_requests, batch_limit, rate, (args.qllm, BASELINE))
                                     for rate in args.rates])  # fmt: skip
                rows.append({"cost model": hardware, "requests": num_requests, "batch": batch_limit,
                             **claims(summary, args.qllm)})  # fmt: skip
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print(f"SIMULATED ({args.qllm} against {BASELINE}, Mixtral-8x7B NF4 on an A100, cost models named in the first column):")
    print(table.to_string(index=False, float_format="%.2f"))
    print("\nthe paper (measured):", "; ".join(f"{claim}: {value}" for claim, value in PAPER.items()))
    print("\nband (min-max over the cost models), per trace length and batch limit:")
    band = table.groupby(["requests", "batch"]).agg(["min", "max"]).drop(columns="cost model", level=0)
    print(band.to_string(float_format="%.2f"))
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
