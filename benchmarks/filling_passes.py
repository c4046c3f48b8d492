"""At the paper's scale, SIMULATED: what each way of filling the passes that run anyway does to
QLLM's throughput against the FCFS run-to-completion baseline, and to its LS TTFT.

Variants: `qllm_one_phase` (the paper's mode: a BE prompt runs in a prefill pass of its own), BE
prompts topping up an LS prefill pass (`policy.be_prefill_top_up`), `qllm` (mixed batches: BE
prompts ride in the decode pass), `qllm` with catch-up merge, and `fcfs_cb` with and without
mixed batches for reference. Each replays the first `--requests` of the paper-scale ShareGPT trace
(as benchmarks/paper_band.py) on the simulated Mixtral-8x7B NF4 at each rate and batch limit, and
prints throughput / the baseline's and the mean LS TTFT, per rate.

    python benchmarks/filling_passes.py                                   # ideal A100, batch 16 and 32
    python benchmarks/filling_passes.py --hardware paper_calibrated --batch 16
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))  # its sibling, whose paper-scale runs this one varies
from paper_band import BASELINE, summaries  # noqa: E402

VARIANTS = {  # name: (engine, overrides)
    "qllm_one_phase": ("qllm_one_phase", []),
    "qllm_one_phase+top-up": ("qllm_one_phase", ["engine.qllm_one_phase.policy.be_prefill_top_up=true"]),
    "qllm": ("qllm", []),
    "qllm+merge": ("qllm", ["engine.qllm.catch_up_merge=true"]),
    "fcfs_cb": ("fcfs_cb", []),
    "fcfs_cb+mixed": ("fcfs_cb", ["engine.fcfs_cb.policy.mixed_batches=true"]),
}


def summary(engine: str, overrides: list[str], hardware: str, num_requests: int, batch_limit: int, rate: float) -> pd.Series:
    rows = summaries(hardware, num_requests, batch_limit, rate, (engine,), overrides).set_index("priority_class")
    return pd.Series({"throughput": rows.loc["all", "throughput_tok_s"], "LS TTFT": rows.loc["LS", "ttft_s_mean"]})


def main(argv: list[str] | None = None) -> pd.Series:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--hardware", default="a100_80gb", help="a100_80gb (ideal) or paper_calibrated")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 3, 4, 6, 8])
    args = parser.parse_args(argv)
    points = list(itertools.product(args.batch, args.rates, [BASELINE, *VARIANTS]))
    rows = []
    for batch_limit, rate, variant in tqdm(points, desc="simulated runs"):
        engine, overrides = VARIANTS.get(variant, (BASELINE, []))
        result = summary(engine, overrides, args.hardware, args.requests, batch_limit, rate)
        rows.append({"batch": batch_limit, "rate": rate, "variant": variant, **result})
    table = pd.DataFrame(rows).set_index(["batch", "rate", "variant"])
    ratio = table["throughput"] / table.xs(BASELINE, level="variant")["throughput"]
    pd.set_option("display.width", 250)
    print(f"SIMULATED: Mixtral-8x7B NF4 on {args.hardware}, the first {args.requests} paper-scale requests")
    print(f"\nthroughput / {BASELINE}'s:")
    print(ratio.unstack("variant")[list(VARIANTS)].to_string(float_format="%.3f"))
    print("\nLS TTFT, mean (s):")
    print(table["LS TTFT"].unstack("variant")[[BASELINE, *VARIANTS]].to_string(float_format="%.3f"))
    print("\nthroughput / the baseline's, lowest over the rates:")
    print(ratio.unstack("variant")[list(VARIANTS)].groupby(level="batch").min().to_string(float_format="%.3f"))
    return ratio


if __name__ == "__main__":
    main()
