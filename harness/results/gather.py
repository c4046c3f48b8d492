"""Gather runs into one table and draw the figures: the sweep callback and `qllm-report`.

Every complete run (a directory holding the DONE marker, harness.results.run_dir) below a root is
read; their summaries are concatenated into `sweep_summary.{parquet,csv}` with the swept
parameters as columns (from each run's Hydra overrides, `.hydra/overrides.yaml`), plus
`offered_rps` (the trace's measured arrival rate) and `run_dir`. The figures
(harness.results.figures) go to `figures/`: metric-vs-x plots when a parameter varies, and the TTFT
CDF, turnaround bars and timeline of the most loaded run. `report.html` (harness.results.report) shows
it all in one page.

    qllm-report results/sweeps/ttft_vs_rate         # after the fact, for any results folder
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from harness.results import figures
from harness.results.comparison import comparison_table
from harness.results.repeats import REPEAT, first_repeat
from harness.results.report import REPORT_FILE, write_report
from harness.results.run_dir import DONE_FILE, is_complete, write_tables
from qllm.errors import exit_with_usage_error

SWEEP_TABLE = "sweep_summary"
FIGURES_DIR = "figures"
# Overrides that choose what runs or how it prints, not a parameter of the measured point.
NOT_PARAMETERS = ("experiment", "engine", "progress", "record_token_ids", "report")
# Overrides the summary has a column for already (harness.app.sweep_columns).
RECORDED_OVERRIDES = ("model", "hardware", "trace", "seed", "trace.rate", "trace.burstiness", "trace.ls_fraction")
# The x axis of the rate-style figures: the first of these that varies between runs, plotted as
# PLOTTED_AS says (a time-scaled replay against the load it offered, which its time scale only implies).
X_AXES = ("rate", "ls_fraction", "burstiness", "time_scale")
PLOTTED_AS = {"time_scale": "offered_rps"}

log = logging.getLogger(__name__)


def find_complete_runs(root: Path) -> list[Path]:
    """Every directory at or below `root` holding the completion marker, sorted."""
    root = Path(root)
    return sorted(marker.parent for marker in root.rglob(DONE_FILE) if marker.is_file())


def run_overrides(run_dir: Path) -> dict[str, object]:
    """The run's scalar command-line and sweep overrides, key -> value (empty without Hydra files)."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    lines = yaml.safe_load(path.read_text()) or []
    parsed = OverridesParser.create().parse_overrides(lines)
    return {
        o.key_or_group: o.value() for o in parsed
        if o.key_or_group not in NOT_PARAMETERS and not o.is_delete() and isinstance(o.value(), (int, float, str, bool))
    }  # fmt: skip


def parameter_names(keys: Sequence[str], existing: Sequence[str]) -> dict[str, str | None]:
    """Override key -> column: its last dotted part if that is unique and new, else the full key;
    None for keys the summary records already (RECORDED_OVERRIDES)."""
    short = {key: key.rsplit(".", 1)[-1] for key in keys}
    names = {}
    for key in keys:
        is_unique = list(short.values()).count(short[key]) == 1 and short[key] not in existing
        names[key] = None if key in RECORDED_OVERRIDES else short[key] if is_unique else key
    return names


def offered_rps(requests: pd.DataFrame) -> float:
    """Arrivals per second of the trace a run replayed: (n - 1) / (last - first arrival); the mean
    over the traces of a run with repeats (harness.results.repeats)."""
    if REPEAT in requests.columns:
        return float(pd.Series([offered_rps(r.drop(columns=REPEAT)) for _, r in requests.groupby(REPEAT)]).mean())
    arrivals = requests.drop_duplicates("request_id")["arrival_s"]
    span = arrivals.max() - arrivals.min()
    return (len(arrivals) - 1) / span if span > 0 else float("nan")


def _run_summary(run_dir: Path, root: Path, requests: pd.DataFrame) -> pd.DataFrame:
    summary = pd.read_parquet(run_dir / "summary.parquet")
    overrides = run_overrides(run_dir)
    columns = parameter_names(list(overrides), list(summary.columns))
    at = summary.columns.get_loc("priority_class")
    for key, value in overrides.items():
        if columns[key] is not None and columns[key] not in summary.columns:
            summary.insert(at, columns[key], value)
            at += 1
    summary["offered_rps"] = offered_rps(requests)
    summary["run_dir"] = str(run_dir.relative_to(root)) if run_dir != root else "."
    return summary


def gather_tables(run_dirs: Sequence[Path], root: Path) -> dict[str, pd.DataFrame]:
    """`summary` (see module doc) and `requests` (with `run_dir`) of every run, concatenated."""
    summaries, requests = [], []
    for run_dir in run_dirs:
        run_requests = pd.read_parquet(run_dir / "requests.parquet")
        summaries.append(_run_summary(run_dir, Path(root), run_requests))
        requests.append(run_requests.assign(run_dir=summaries[-1]["run_dir"].iloc[0]))
    summary = pd.concat(summaries, ignore_index=True)
    # Parameters some runs lack go before priority_class too (concat appends them at the end).
    leading = [c for s in summaries for c in s.columns[: s.columns.get_loc("priority_class")]]
    leading = list(dict.fromkeys(leading))
    summary = summary[leading + [c for c in summary.columns if c not in leading]]
    return {"summary": summary, "requests": pd.concat(requests, ignore_index=True)}


def sweep_axis(summary: pd.DataFrame) -> str | None:
    """The column to plot against: the first of X_AXES that differs between runs (None: one point)."""
    for column in X_AXES:
        if column in summary.columns and summary[column].nunique(dropna=True) > 1:
            return PLOTTED_AS.get(column, column)
    return None


def focus_run(summary: pd.DataFrame, x: str | None) -> str:
    """The run_dir of the most loaded point (largest x; the first run without a sweep axis)."""
    if x is None:
        return str(summary["run_dir"].iloc[0])
    return str(summary.sort_values([x, "run_dir"], kind="stable")["run_dir"].iloc[-1])


def ls_slo_s(requests: pd.DataFrame) -> float | None:
    """The LS TTFT SLO the runs were judged by (the largest, if they differ); None without one."""
    slo = requests.loc[requests["priority_class"] == "LS", "slo_ttft_s"].dropna()
    return float(slo.max()) if len(slo) else None


def rows_at_focus(summary: pd.DataFrame, x: str | None) -> pd.DataFrame:
    """The summary rows at the most loaded point (every replicate of it); all rows without an axis."""
    if x is None:
        return summary
    focus_x = summary.loc[summary["run_dir"] == focus_run(summary, x), x].iloc[0]
    return summary[summary[x] == focus_x]


def draw_figures(tables: dict[str, pd.DataFrame], root: Path, out_dir: Path) -> list[Path]:
    """Every figure the gathered tables support; returns the PNG paths."""
    summary, requests = tables["summary"], tables["requests"]
    x = sweep_axis(summary)
    focus = focus_run(summary, x)
    simulated = sorted(summary["simulated_on"].dropna().unique()) if "simulated_on" in summary else []
    drawn = []

    def save(fig, name: str) -> None:
        if simulated:  # never to be taken for a measurement
            fig.suptitle(f"SIMULATED ({', '.join(simulated)} cost model), not measured", color="#b2182b", y=1.02)
        drawn.append(figures.save_figure(fig, out_dir, name))

    if x is not None:
        save(figures.ttft_vs_x_figure(summary, x, slo_s=ls_slo_s(requests)), f"ttft_vs_{x}")
        save(figures.slo_vs_x_figure(summary, x), f"slo_vs_{x}")
        save(figures.throughput_vs_x_figure(summary, x), f"throughput_vs_{x}")
    at_focus = rows_at_focus(summary, x)
    title = None if x is None else f"at {x} = {at_focus[x].iloc[0]:g}"
    focus_requests = requests[requests["run_dir"] == focus]
    if focus_requests["ttft_s"].notna().any():  # skip what has no data (nothing finished, say), silently
        save(figures.turnaround_figure(at_focus, title=title), "turnaround")
        save(figures.ttft_cdf_figure(focus_requests), "ttft_cdf")
    timeline = first_repeat(pd.read_parquet(Path(root) / focus / "timeline.parquet"))  # one trace, not overlaid
    if timeline.empty:  # no quanta recorded (a remote engine, or nothing ran): nothing to draw
        return drawn
    first = first_repeat(focus_requests)
    ls_arrivals = first.loc[first["priority_class"] == "LS", ["engine", "arrival_s"]]
    save(figures.timeline_figure(timeline, ls_arrivals_s=ls_arrivals), "timeline")
    window = figures.first_preemption_window(timeline)
    if window is not None:
        save(figures.timeline_figure(timeline, window_s=window, ls_arrivals_s=ls_arrivals), "timeline_zoom")
    return drawn


def report(root: Path, out_dir: Path | None = None, with_table: bool = True, with_figures: bool = True,
           with_html: bool = True):
    """Gather every complete run below `root`; write the table into `out_dir` (default `root`),
    the figures into its figures/ and the page into its report.html (harness.results.report). Returns the
    gathered summary (None: no complete run)."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root
    runs = find_complete_runs(root)
    if not runs:
        log.warning("no complete run (no %s marker) below %s", DONE_FILE, root)
        return None
    tables = gather_tables(runs, root)
    if with_table:
        write_tables(out_dir, {SWEEP_TABLE: tables["summary"]})
    if with_figures:
        draw_figures(tables, root, out_dir / FIGURES_DIR)
    if with_html:
        write_report(root, tables, out_dir, x=sweep_axis(tables["summary"]))
    return tables["summary"]


class GatherSweep(Callback):
    """Hydra callback: gathers a multirun's jobs when it ends, and draws a single run's figures;
    both write report.html unless the config says `report: false`."""

    def __init__(self, figures: bool = True) -> None:
        self.figures = figures

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = report(sweep_dir, with_figures=self.figures, with_html=config.get("report", True))
        if summary is not None:
            print(comparison_table(summary.drop(columns="run_id")))
            print(f"\nsweep summary: {sweep_dir / SWEEP_TABLE}.parquet ({len(find_complete_runs(sweep_dir))} runs)")

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        job_return = kwargs.get("job_return")
        with_html = config.get("report", True)
        if (self.figures or with_html) and job_return is not None and job_return.hydra_cfg is not None:
            run_dir = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
            if is_complete(run_dir):
                report(run_dir, with_table=False, with_figures=self.figures, with_html=with_html)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="qllm-report",
        description="Gather every complete run (DONE marker) below DIR into sweep_summary.{parquet,csv} "
                    "with the swept parameters as columns, draw the figures into figures/, and print "
                    "the comparison table.",
        epilog="The five commands people run most:\n"
               "  qllm-report results/sweeps/<time>      # a sweep: table, figures, comparison\n"
               "  qllm-report results/runs/<time>        # one run\n"
               "  qllm-report results/                   # every complete run below results/\n"
               "  qllm-report DIR -o report/ --no-figures   # the table only, written elsewhere\n"
               "  qllm-report DIR --reference fcfs_rtc   # LS TTFT ratios relative to another engine\n"
               "Results: DIR/sweep_summary.{parquet,csv} and DIR/figures/ (or under --out).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path, help="a results folder: a sweep, a run, or results/ itself")
    parser.add_argument("-o", "--out", type=Path, help="where to write the table and figures/ (default: DIR)")
    parser.add_argument("--no-figures", action="store_true", help="draw no figures into figures/")
    parser.add_argument("--no-html", action="store_true", help="write no report.html")
    parser.add_argument("--reference", default="qllm", help="engine the LS TTFT ratios are relative to")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if not args.dir.is_dir():
        exit_with_usage_error("qllm-report", f"{args.dir} is not a directory")
    summary = report(args.dir, args.out, with_figures=not args.no_figures, with_html=not args.no_html)
    if summary is None:
        exit_with_usage_error("qllm-report", f"no complete run (no {DONE_FILE} file) below {args.dir}")
    print(comparison_table(summary.drop(columns="run_id"), reference_engine=args.reference))
    out = args.out or args.dir
    print(f"\n{summary['run_dir'].nunique()} runs -> {out / SWEEP_TABLE}.parquet, .csv"
          + ("" if args.no_figures else f"; figures in {out / FIGURES_DIR}")
          + ("" if args.no_html else f"; page {out / REPORT_FILE}"))


if __name__ == "__main__":
    main()
