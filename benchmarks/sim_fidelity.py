"""How closely the simulator predicts the real executor, on workloads drawn at random from a seed.

Each workload (harness/traces/random_workloads.py) is a random choice of arrival process (Poisson, Gamma
with CV 2-4, or a real trace's timestamps), lengths (ShareGPT, Azure code and conversation,
BurstGPT, Mooncake, uniform; prompts up to 512 tokens, outputs up to 256), load (0.3x-2x the
engine's capacity), LS share (0.1-0.5), batch limit (8/16/32), granularity (layer/expert), model
and engine (qllm, fcfs_rtc, fcfs_cb, priority_cb). The workloads of a model run on the real executor
in three sweeps (`--real-runs`), each sweep running every workload of the model once, and
each runs once simulated. A workload's real runs are thus minutes apart: the VM these numbers come
from changed speed by up to 20 % within a few minutes (benchmarks/machine_drift.py,
docs/reproducing.md), which two runs back to back hide. The model is profiled on this machine
(`qllm-profile`, in this process) in parts, one before each sweep and one after the last
(`--profile-parts`), merged into the profile the simulator reads: its samples span the minutes the
real runs span, so the comparison measures the cost model rather than how far the machine moved
between a profile and the runs (`--profile-parts 1`: the whole profile before the runs, as a user
who profiles once would). A workload's capacity, which sets its load, is the simulated engine's
throughput with every request arriving at once, priced by the first part. Per
workload, class and metric it reports the simulated value's signed error against the mean of the
real runs, the real runs' own spread (max - min) / mean, and the floor: the median |error| that a
simulator predicting the true mean exactly would still show against the mean of this many noisy
runs (0.674 sigma / sqrt(runs), sigma estimated from the runs), and the runs' 90 % interval for
their mean (Student's t: an exact simulator falls outside it on 10 % of rows); then medians, p90s and
signed medians per metric, with the median and p90 of |error| such a simulator would show over the
same rows (the floor's median and p90) and the share of rows outside their interval (a simulator
whose error is the runs' noise shows about 10 %; a biased one more), and each model's signed
medians (one sign on all of a model's workloads is its profile: the machine's speed in the minutes
the profile was measured) and each length source's (ShareGPT's prompts are real text, routed unlike
the profile's random ids).

    taskset -c 1 python benchmarks/sim_fidelity.py                # a random seed (printed), 12 workloads
    taskset -c 1 python benchmarks/sim_fidelity.py --seed 7 --out results/fidelity_7.csv
    taskset -c 1 python benchmarks/sim_fidelity.py --seed 7 --compare hardware.after_prompts_delay=false \
        --compare hardware.wake_up_delay=false

`--compare` (repeatable, one variant each) simulates every workload again with other overrides,
against the same real runs, and reports each: what one part of the cost model is worth, without the
machine's drift between two suites in the way. `--compare-profile` (repeatable) does the same for a
change in what `qllm-profile` measures: a second profile of each model, with these qllm-profile
overrides, measured in parts in the same slots as the first (each part right after the first's, so
the machine's drift hits both alike), simulates every workload again:

    taskset -c 1 python benchmarks/sim_fidelity.py --seed 7 --compare-profile shapes.num_shapes=300

Pin it to one core, as the presets run (one torch thread). The workloads' arrivals span about
`--duration` seconds each, so a run of 12 takes about 12 x 4 x that plus the profiles.
"""

from __future__ import annotations

import argparse
import functools
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats

from harness.app import compose_config, run_engine
from harness.engines import RunResources
from harness.profiling.profile_app import profile_in_process
from harness.traces.random_workloads import (ENGINES, MODELS, SHARED_DATA, Limits, Workload, draw_trace, draw_workloads,
                                      requests_for, with_rate)  # fmt: skip
from harness.replay import requests_from_trace
from harness.traces.trace_schema import validate_trace
from qllm.clock import VirtualClock
from qllm.sim.executor import SimExecutor
from qllm.sim.level import Level
from qllm.sim.profiled import IN_RUN, ProfiledCostModel, merge_profiles, read_profile

METRICS = {"ttft_s_p50": "TTFT p50", "ttft_s_p99": "TTFT p99", "tpot_s_mean": "TPOT mean",
           "e2e_s_p50": "turnaround p50", "throughput_tok_s": "throughput"}  # fmt: skip
CLASSES = ("LS", "BE", "all")
CAPACITY_REQUESTS = 64  # requests arriving at once, to measure a workload's capacity on the simulator
HALF_NORMAL_MEDIAN = 0.6745  # median of |x| for x ~ N(0, 1)


def run_summary(workload: Workload, trace: pd.DataFrame, executor: list[str]) -> pd.DataFrame:
    """The engine's summary table (a row per class) for `trace`, on the real or simulated executor."""
    cfg = compose_config(*workload.overrides(), *executor, "progress=false")
    resources = RunResources(cfg)
    requests = requests_from_trace(validate_trace(trace, source=f"workload {workload.index}"))
    (name, engine_cfg), = cfg.engine.items()
    return run_engine(name, engine_cfg, resources, requests, cfg, {"run_id": str(workload.index)})["summary"]


def capacity_rps(workload: Workload, limits: Limits, sim: list[str]) -> float:
    """Requests per second the simulated engine serves of this workload's requests, all arriving at once."""
    trace = draw_trace(with_rate(workload, 1.0), CAPACITY_REQUESTS, 1.0, limits).assign(arrival_s=0.0)
    summary = run_summary(workload, trace, sim).set_index("priority_class")
    return float(summary.loc["all", "throughput_rps"])


def metric_values(summary: pd.DataFrame) -> dict[tuple[str, str], float]:
    rows = summary.set_index("priority_class")
    return {(cls, label): float(rows.loc[cls, column]) if cls in rows.index else np.nan
            for cls in CLASSES for column, label in METRICS.items()}  # fmt: skip


def compare(workload: Workload, reals: list[pd.DataFrame], sim: pd.DataFrame) -> pd.DataFrame:
    """Per class and metric: the real runs (`real_1`...), their mean, spread, floor and 90 % interval
    (module docstring), the simulated value and its error."""
    runs = [metric_values(summary) for summary in reals]
    simulated = metric_values(sim)
    t_90 = scipy_stats.t.ppf(0.95, len(runs) - 1)  # Student's t: sigma is estimated from these few runs
    rows = []
    for key in simulated:
        values = np.array([run[key] for run in runs])
        mean = values.mean()
        if not np.isfinite(mean) or mean <= 0:
            continue  # a class the workload did not draw, or a one-token output's TPOT
        standard_error = values.std(ddof=1) / mean / np.sqrt(len(values))  # of the runs' mean, relative to it
        rows.append({"workload": workload.index, "model": workload.model, "engine": workload.engine, "lengths": workload.lengths,
                     "class": key[0], "metric": key[1], **{f"real_{i}": v for i, v in enumerate(values, start=1)},
                     "real_mean": mean, "sim": simulated[key], "real_spread": (values.max() - values.min()) / mean,
                     "floor": HALF_NORMAL_MEDIAN * standard_error, "interval_90": t_90 * standard_error,
                     "error": (simulated[key] - mean) / mean})  # fmt: skip
    return pd.DataFrame(rows)


def run_suite(seed: int, count: int, limits: Limits, models, engines, profile_overrides: list[str],
              profiles: dict[str, Path] | None = None, real_runs: int = 3, profile_parts: int | None = None,
              compared: list[list[str]] = (), compared_profiles: list[list[str]] = (),
              progress=print) -> tuple[list[Workload], pd.DataFrame]:  # fmt: skip
    """Draw `count` workloads from `seed` and compare `real_runs` real runs and a simulated one of
    each (module docstring). `profiles`: a profile per model to use instead of measuring one.
    `profile_parts`: the profile measured in this many parts, spread over the sweeps (module
    docstring; default one before each sweep and one after the last). `compared`: variants, each the
    overrides of one more simulated run of each workload, against the same real runs (columns
    `sim_compared_<i>`, `error_compared_<i>`, i from 1); then `compared_profiles`, each the
    qllm-profile overrides of a second profile measured alongside the first, in the same slots."""
    workloads = draw_workloads(seed, count, models, engines)
    parts = real_runs + 1 if profile_parts is None else profile_parts
    tables, done = [], []
    with tempfile.TemporaryDirectory() as folder:
        for model in sorted({w.model for w in workloads}):
            profile = SpreadProfile(model, Path(folder), parts, real_runs + 1, profile_overrides, progress,
                                    given=(profiles or {}).get(model))  # fmt: skip
            alongside = [SpreadProfile(model, Path(folder) / f"compared_{i}", parts, real_runs + 1,
                                       [*profile_overrides, *overrides], progress, label=f" ({' '.join(overrides)})")
                         for i, overrides in enumerate(compared_profiles, start=1)]  # fmt: skip
            sim = ["executor=sim", "hardware=profiled", f"hardware.path={profile.measure(slot=0)}"]
            traced = []
            for workload in (w for w in workloads if w.model == model):
                workload = with_rate(workload, capacity_rps(workload, limits, sim))
                traced.append((workload, draw_trace(workload, requests_for(workload.rate, limits), workload.rate, limits)))
            reals = [[] for _ in traced]
            for sweep in range(real_runs):  # a sweep runs each workload once: a workload's runs are minutes apart
                for measured in (profile, *alongside):
                    measured.measure(slot=sweep)
                for (workload, trace), runs in zip(traced, reals):
                    started = time.perf_counter()
                    runs.append(run_summary(workload, trace, ["executor=real"]))
                    progress(f"{workload.describe()} rate={workload.rate:.1f}/s n={len(trace)}: real run {sweep + 1} of "
                             f"{real_runs} ({time.perf_counter() - started:.0f} s)")  # fmt: skip
            path = profile.measure(slot=real_runs)
            sim = ["executor=sim", "hardware=profiled", f"hardware.path={path}"]
            variants = [*compared, *([f"hardware.path={other.measure(slot=real_runs)}"] for other in alongside)]
            for spread in (profile, *alongside):  # each measured by now: measure gives its profile
                if leveled := levels(model, spread.measure(slot=real_runs)):
                    progress(f"{model}{spread.label}'s level (qllm.sim.level): " + "; ".join(
                        f"{g} prompts {x.prefill:.3f}, decode {x.decode:.3f}" for g, x in leveled.items()))  # fmt: skip
            for (workload, trace), runs in zip(traced, reals):
                table = compare(workload, runs, run_summary(workload, trace, sim))
                for i, overrides in enumerate(variants, start=1):
                    other = compare(workload, runs, run_summary(workload, trace, [*sim, *overrides]))
                    table = table.merge(other[["class", "metric", "sim", "error"]].rename(
                        columns={"sim": f"sim_compared_{i}", "error": f"error_compared_{i}"}), on=["class", "metric"])
                progress(f"{workload.describe()}: median |error| {100 * table['error'].abs().median():.1f} %")
                tables.append(table)
                done.append(workload)
    return done, pd.concat(tables, ignore_index=True)


def levels(model: str, profile: Path) -> dict[str, Level]:
    """Per granularity, the level a simulated executor takes from the profile's passes of engine runs
    (with hardware.in_run_level=true); none from a profile measured without them."""
    table, _, _ = read_profile(profile)
    if not table["stage"].str.startswith(IN_RUN).any():
        return {}
    config = RunResources(compose_config(f"model={model}", "executor=sim")).model_config
    costs = functools.partial(ProfiledCostModel, str(profile), in_run_level=True)
    executors = {g: SimExecutor(config, VirtualClock(), costs, g) for g in ("iteration", "layer", "expert")}
    return {g: executor.level for g, executor in executors.items()}


class SpreadProfile:
    """A model's profile measured in `parts` parts (`qllm-profile part=i parts=n`) spread over `slots`
    moments of the suite (before each sweep, after the last), so that its samples span the minutes the
    real runs do; `measure(slot)` measures the parts due by then and gives the profile of all so far
    (or the `given` one, measured elsewhere)."""

    def __init__(self, model: str, folder: Path, parts: int, slots: int, overrides: list[str], progress,
                 given: Path | None = None, label: str = "") -> None:  # fmt: skip
        self.model, self.folder, self.parts, self.slots = model, folder, parts, slots
        self.overrides, self.progress, self.label = overrides, progress, label
        self.measured: list[Path] = []
        self.given, self.merged = given, None

    def measure(self, slot: int) -> Path:
        if self.given is not None:
            return self.given
        due = [part for part in range(self.parts) if part * self.slots // self.parts <= slot][len(self.measured):]
        for part in due:
            path = self.folder / f"{self.model}.part{part}.parquet"
            started = time.perf_counter()
            profile_in_process(self.model, path, [f"part={part}", f"parts={self.parts}", *self.overrides])
            self.progress(f"profiled {self.model}{self.label}, part {part + 1} of {self.parts}, in "
                          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
            self.measured.append(path)
        if due:
            self.merged = self.folder / f"{self.model}.{len(self.measured)}.parquet"
            merge_profiles(self.measured, self.merged)
        return self.merged


def per_metric(table: pd.DataFrame) -> pd.DataFrame:
    """Median and p90 of |error|, the signed median, the real runs' median spread, the floor's median
    and p90 (`exact_quantile`), and the share of rows whose simulated value lies outside the real
    runs' 90 % interval (10 % for an exact simulator), per metric and over all."""

    def stats(rows: pd.DataFrame) -> dict:
        error = rows["error"]
        return {"n": len(rows), "|error| median %": 100 * error.abs().median(), "|error| p90 %": 100 * error.abs().quantile(0.9),
                "signed median %": 100 * error.median(), "real spread median %": 100 * rows["real_spread"].median(),
                "floor median %": 100 * exact_quantile(rows["floor"], 0.5), "floor p90 %": 100 * exact_quantile(rows["floor"], 0.9),
                "outside 90 % interval %": 100 * (error.abs() > rows["interval_90"]).mean()}  # fmt: skip

    by_metric = {metric: stats(rows) for metric, rows in table.groupby("metric", sort=False)}
    return pd.DataFrame.from_dict({**by_metric, "all metrics": stats(table)}, orient="index").rename_axis("metric")


def exact_quantile(floor: pd.Series, q: float, draws: int = 2000) -> float:
    """The q-quantile of |error| over these rows that a simulator exact on every one (the true mean
    of its real runs) would show against the mean of the runs measured: each row's error normal with
    the sigma its floor was computed from, the median over `draws` such draws (seeded: the same table,
    the same floor). The goals' p90 cannot be read below it: against two runs' mean on the
    development VM (seeds 66-67, real runs' spread 12 %) it was 18.5 %."""
    scale = floor.to_numpy(float) / HALF_NORMAL_MEDIAN
    errors = np.random.default_rng(0).standard_normal((draws, len(scale))) * scale
    return float(np.median(np.quantile(np.abs(errors), q, axis=1))) if len(scale) else np.nan


def signed_medians(table: pd.DataFrame, by: str) -> pd.DataFrame:
    """The signed median per value of column `by` and metric, over those workloads (class `all`). A
    model's workloads share its profile: one sign on all of them is the profile (the machine's speed in
    the minutes it was measured) more than the cost model's shape. By lengths: ShareGPT's
    prompts are real text, the others' and the profile's random ids (benchmarks/passes_in_run.py
    counts the experts each routes to)."""
    whole = table[table["class"] == "all"]
    return (100 * whole.groupby([by, "metric"], sort=False)["error"].median()).unstack("metric")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="draws the workloads (default: a random one, printed)")
    parser.add_argument("--workloads", type=int, default=12)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    parser.add_argument("--real-runs", type=int, default=3,
                        help="real runs per workload (at least 2): more lower the floor their noise sets (default 3: "
                             "against two runs' mean, a simulator exact on every workload would have shown a p90 |error| "
                             "of 18.5 %% on the development VM)")
    parser.add_argument("--duration", type=float, default=Limits.duration_s, help="seconds of arrivals per workload")
    parser.add_argument("--max-prompt-len", type=int, default=Limits.max_prompt_len)
    parser.add_argument("--max-output-len", type=int, default=Limits.max_output_len)
    parser.add_argument("--max-requests", type=int, default=Limits.max_requests)
    parser.add_argument("--profile", nargs=2, action="append", metavar=("MODEL", "PATH"), default=[],
                        help="use this profile for MODEL instead of measuring one (repeatable)")
    parser.add_argument("--profile-parts", type=int, default=None,
                        help="measure each profile in this many parts spread over the sweeps (default: real runs + 1, "
                             "one before each sweep and one after the last; 1: the whole profile before the runs)")
    parser.add_argument("--profile-override", action="append", default=[],
                        help="a qllm-profile override for the profiles measured here, e.g. shapes.num_shapes=60 (repeatable)")
    parser.add_argument("--compare", nargs="+", action="append", default=[], metavar="OVERRIDE",
                        help="simulate each workload again with these overrides, against the same real runs, and report "
                             "both, e.g. --compare hardware.after_prompts_delay=false (repeatable: one variant each)")
    parser.add_argument("--compare-profile", nargs="+", action="append", default=[], metavar="OVERRIDE",
                        help="measure a second profile of each model with these qllm-profile overrides, in parts beside "
                             "the first, and simulate each workload again with it (repeatable: one variant each)")
    parser.add_argument("--out", type=Path, help="write the per-workload table here (CSV)")
    args = parser.parse_args(argv)
    if args.real_runs < 2:
        parser.error(f"--real-runs {args.real_runs}: at least 2 (their spread is part of the report)")
    if args.profile_parts is not None and args.profile_parts < 1:
        parser.error(f"--profile-parts {args.profile_parts}: at least 1")
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    print(f"seed {seed} (repeat with --seed {seed}); data: {SHARED_DATA if SHARED_DATA.is_dir() else 'shipped only'}")
    torch.set_num_threads(1)
    limits = Limits(args.max_prompt_len, args.max_output_len, args.duration, min(Limits.min_requests, args.max_requests),
                    args.max_requests)  # fmt: skip
    profiles = {model: Path(path) for model, path in args.profile}
    workloads, table = run_suite(seed, args.workloads, limits, args.models, args.engines, args.profile_override, profiles,
                                 args.real_runs, args.profile_parts, args.compare, args.compare_profile)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 1000)
    print("\nworkloads:")
    for workload in workloads:
        print(f"  {workload.describe()} rate={workload.rate:.2f}/s")
    shown = table.assign(**{"error %": (100 * table["error"]).round(1), "spread %": (100 * table["real_spread"]).round(1)})
    real_columns = [c for c in table.columns if c.startswith("real_") and c[5:].isdigit()]
    print(shown[["workload", "engine", "class", "metric", *real_columns, "sim", "spread %", "error %"]]
          .to_string(index=False, float_format="%.4g"))  # fmt: skip
    print(f"\nseed {seed}: per metric over {len(workloads)} workloads x classes")
    print(per_metric(table).round(1).to_string())
    variants = [" ".join(overrides) for overrides in args.compare]
    variants += [f"a profile measured alongside with {' '.join(overrides)}" for overrides in args.compare_profile]
    for i, variant in enumerate(variants, start=1):
        print(f"\nseed {seed}: the same real runs simulated with {variant}")
        print(per_metric(table.assign(error=table[f"error_compared_{i}"])).round(1).to_string())
    print("\nsigned median % per model (one sign across a model's workloads: its profile)")
    print(signed_medians(table, "model").round(1).to_string())
    print("\nsigned median % per lengths (sharegpt: prompts of real text, routed unlike the profile's random ids)")
    print(signed_medians(table, "lengths").round(1).to_string())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.assign(seed=seed).to_csv(args.out, index=False)
        print(f"-> {args.out}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
