"""How closely the simulator predicts the real executor: the CPU presets' points run on both.

For each load (the CPU presets' trace: 120 ShareGPT requests, prompts cut to 64 tokens, outputs to
32, 20 % LS, from under to past the tiny model's capacity of about 60 req/s) and each engine
(qllm, the FCFS run-to-completion baseline, priority_cb), the real executor replays the trace in
real time, and the simulator replays it on its virtual clock with the profiled cost model, measured
by `qllm-profile` just before (each of `--repeats` rounds: a profile, then every point, real and
simulated). Per priority class it prints the error of the simulated p50 and p99 TTFT, p50
turnaround and throughput against the real runs, (sim - real) / real on the medians over the
rounds, beside the real rounds' own spread, (max - min) / median: on a shared machine the real
runs vary too, and an error inside that spread is noise, not the model.

    taskset -c 1 python benchmarks/sim_fidelity.py                                     # about 3 min a round
    taskset -c 1 python benchmarks/sim_fidelity.py --profile profiles/tiny_mixtral.parquet  # the committed one

Pin it to one core, as the presets run (one torch thread).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from harness.app import CONF_DIR, compose_config, run_engine
from harness.engines import RunResources
from harness.profile_app import profile
from harness.replay import requests_from_trace
from harness.workload import load_workload

ENGINES = ("qllm", "fcfs_rtc", "priority_cb")
RATES = (10, 30, 50, 80)  # nominal req/s: the presets' grid (ttft_vs_rate 10-50, throughput_vs_rate to 80)
POINT = ("experiment=ttft_vs_rate", "progress=false")  # the CPU presets' trace, caps, LS share and SLO
METRICS = {"ttft_s_p50": "TTFT p50", "ttft_s_p99": "TTFT p99", "e2e_s_p50": "turnaround p50", "throughput_tok_s": "tok/s"}


def summaries(executor_overrides: tuple[str, ...], rate: float, engines=ENGINES) -> dict[str, pd.DataFrame]:
    """Each engine's summary table (rows per class) at `rate`."""
    cfg = compose_config(*POINT, f"engine=[{','.join(engines)}]", f"trace.rate={rate}", *executor_overrides)
    resources = RunResources(cfg)
    requests = requests_from_trace(load_workload(cfg.trace))
    params = {"run_id": f"{rate}", "rate": rate}
    return {name: run_engine(name, engine_cfg, resources, requests, cfg, params)["summary"]
            for name, engine_cfg in cfg.engine.items()}  # fmt: skip


def metric_rows(summary: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(class, metric label) -> value, from one engine's summary table."""
    rows = summary.set_index("priority_class")
    return {(cls, label): float(rows.loc[cls, column]) for cls in ("LS", "BE", "all") for column, label in METRICS.items()}


def compare(reals: list[pd.DataFrame], sims: list[pd.DataFrame]) -> pd.DataFrame:
    """Simulated against real metrics, each the median over the repeats, and the real repeats' spread."""
    real, sim = (pd.DataFrame([metric_rows(summary) for summary in runs]) for runs in (reals, sims))
    rows = []
    for key, values in real.items():
        median, simulated = values.median(), sim[key].median()
        rows.append({"class": key[0], "metric": key[1], "real": median, "sim": simulated,
                     "real spread": (values.max() - values.min()) / median, "error": (simulated - median) / median})
    return pd.DataFrame(rows)


def profile_here(out: Path) -> None:
    """`qllm-profile out=<out>` in this process."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("profile", overrides=[f"out={out}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    profile(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", help="a profile to use (default: measure one before each repeat)")
    parser.add_argument("--rates", type=float, nargs="+", default=RATES)
    parser.add_argument("--repeats", type=int, default=3, help="runs per point, each after a fresh profile (medians compared)")
    args = parser.parse_args()
    reals = {rate: [] for rate in args.rates}
    sims = {rate: [] for rate in args.rates}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):  # a profile, then every point: a slow spell of the machine spreads over all
            profile = Path(args.profile) if args.profile else Path(folder) / f"profile{repeat}.parquet"
            if not args.profile:
                profile_here(profile)
            for rate in args.rates:
                reals[rate].append(summaries(("executor=real",), rate))
                sims[rate].append(summaries(("executor=sim", "hardware=profiled", f"hardware.path={profile}"), rate))
    tables = [compare([r[engine] for r in reals[rate]], [s[engine] for s in sims[rate]]).assign(rate=rate, engine=engine)
              for rate in args.rates for engine in ENGINES]  # fmt: skip
    table = pd.concat(tables, ignore_index=True)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    shown = table.assign(**{"error %": (100 * table["error"]).round(1), "real spread %": (100 * table["real spread"]).round(1)})
    columns = ["rate", "engine", "class", "metric", "real", "real spread %", "sim", "error %"]
    print(shown[columns].to_string(index=False, float_format="%.4g"))
    magnitude = table["error"].abs()
    print(f"\n|error| median {100 * magnitude.median():.1f} %, p90 {100 * magnitude.quantile(0.9):.1f} %, "
          f"max {100 * magnitude.max():.1f} %; {int((magnitude <= 0.10).sum())} of {len(table)} within 10 %; "
          f"{int((magnitude <= table['real spread']).sum())} within the real repeats' own spread "
          f"(median spread {100 * table['real spread'].median():.1f} %)")
    print("\nmedian |error| % and median real spread %, by metric and class:")
    pivot = table.assign(error=magnitude).pivot_table(index="metric", columns="class", values=["error", "real spread"],
                                                       aggfunc="median")  # fmt: skip
    print((100 * pivot).round(1).to_string())


if __name__ == "__main__":
    main()
