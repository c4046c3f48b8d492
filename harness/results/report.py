"""report.html: one self-contained page for a run or a gathered sweep (harness.results.gather writes it).

What ran (command, resolved config, model, trace, machine, versions; SIMULATED in red when it
was), the comparison table per engine and class with each baseline's ratio to the reference
engine, interactive figures (harness.results.report_figures) and the per-request table, sortable and
filterable. A sweep gets its figures on top and one section per point. The page needs no network:
plotly.js and the table library (DataTables through itables) are inlined once each; the page is
laid out by a Jinja2 template (templates/report.html.j2). plotly.js travels gzipped (1.9 of its
4.8 MB) and is unpacked by the browser before the figures are drawn from their JSON.

Every number of the comparison table carries its exact value (`data-value`) beside the text shown,
so a test can check the page against summary.parquet.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import gzip
import json
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import plotly.offline
import yaml
from itables import options as itables_options
from itables.javascript import generate_init_offline_itables_html, to_html_datatable

from harness.results import report_figures
from harness.results.atomic import write_text
from harness.results.comparison import CLASS_ORDER, three_digits
from harness.results.figures import engine_order

REPORT_FILE = "report.html"
REFERENCE_ENGINE = "qllm"
# (summary column, header, kind): "time" is shown in one unit per table (ms or s), "pct" as a percentage.
COLUMNS = [
    ("n", "n", "int"), ("n_rejected", "rejected", "int"), ("n_failed", "failed", "int"),
    ("ttft_s_p50", "TTFT p50", "time"), ("ttft_s_p90", "TTFT p90", "time"), ("ttft_s_p99", "TTFT p99", "time"),
    ("tpot_s_p50", "TPOT p50", "time"), ("tpot_s_p99", "TPOT p99", "time"),
    ("itl_s_p50", "ITL p50", "time"), ("itl_s_p99", "ITL p99", "time"),
    ("e2e_s_p50", "turnaround p50", "time"), ("e2e_s_p90", "turnaround p90", "time"),
    ("e2e_s_p99", "turnaround p99", "time"), ("slo_attainment", "SLO met %", "pct"),
    ("goodput_rps", "goodput (req/s)", "float"), ("throughput_tok_s", "tok/s", "float"),
    ("throughput_rps", "req/s", "float"),
]  # fmt: skip
# Each baseline's value as a multiple of the reference engine's, same point and class.
RATIOS = [("ttft_s_p50", "TTFT p50"), ("e2e_s_p50", "turnaround p50"), ("throughput_tok_s", "tok/s")]
REQUEST_COLUMNS = ["engine", "request_id", "priority_class", "status", "arrival_s", "ttft_s", "tpot_s", "e2e_s",
                   "prompt_len", "output_len", "generated_len", "preemptions", "suspended_s", "slo_met", "error"]  # fmt: skip
FILTER_COLUMNS = ("point", "engine", "priority_class", "status")  # a search pane each
SUMMARY_FIGURE_COLUMNS = ("model", "e2e_s_p50", "e2e_s_p99", "ttft_s_p50", "ttft_s_p99")  # beside COLUMNS
PAGE_LENGTH = 25


def _cell(value, kind: str, in_ms: bool) -> dict:
    """A table cell: the text shown and the exact value behind it."""
    exact = "nan" if pd.isna(value) else repr(float(value))
    if pd.isna(value):
        return {"text": "-", "value": exact}
    text = {"int": lambda v: f"{int(v)}", "pct": lambda v: f"{100 * v:.1f}", "float": three_digits,
            "time": lambda v: three_digits(1000 * v if in_ms else v)}[kind](value)  # fmt: skip
    return {"text": text, "value": exact}


def _first_reasons(requests: pd.DataFrame) -> str:
    """`status: first error` of the first rejected and the first failed request, by arrival."""
    reasons = []
    for status in ("rejected", "failed"):
        rows = requests[requests["status"] == status].sort_values("arrival_s", kind="stable")
        if len(rows):
            reasons.append(f"{status}: {rows['error'].iloc[0]}")
    return "; ".join(reasons)


def comparison_rows(summary: pd.DataFrame, requests: pd.DataFrame) -> dict:
    """One point's summary as header and rows (engine, class, cells, ratios, first reasons)."""
    times = summary[[c for c, _, kind in COLUMNS if kind == "time"]].to_numpy(dtype=float)
    in_ms = bool(np.nanmedian(np.abs(times)) < 1.0) if np.isfinite(times).any() else False
    unit = "ms" if in_ms else "s"
    header = [f"{h} ({unit})" if kind == "time" else h for _, h, kind in COLUMNS]
    reference = summary[summary["engine"] == REFERENCE_ENGINE].set_index("priority_class")
    rows = []
    ordered = summary.assign(_order=summary["priority_class"].map(CLASS_ORDER).fillna(len(CLASS_ORDER)))
    for engine in engine_order(summary["engine"]):
        for _, row in ordered[ordered["engine"] == engine].sort_values("_order", kind="stable").iterrows():
            cls = row["priority_class"]
            mine = requests[requests["engine"] == engine]
            mine = mine if cls == "all" else mine[mine["priority_class"] == cls]
            ratios = [_ratio(row, reference, column) for column, _ in RATIOS] if engine != REFERENCE_ENGINE else []
            rows.append({"engine": engine, "priority_class": cls, "reasons": _first_reasons(mine),
                         "cells": [dict(column=c, **_cell(row[c], kind, in_ms)) for c, _, kind in COLUMNS],
                         "ratios": ratios})  # fmt: skip
    has_reference = not reference.empty and len(summary["engine"].unique()) > 1
    ratio_header = [f"{h} / {REFERENCE_ENGINE}" for _, h in RATIOS] if has_reference else []
    return {"header": header, "ratio_header": ratio_header, "rows": rows}


def _ratio(row: pd.Series, reference: pd.DataFrame, column: str) -> str:
    if row["priority_class"] not in reference.index:
        return "-"
    base = reference.loc[row["priority_class"], column]
    return "-" if pd.isna(base) or base == 0 or pd.isna(row[column]) else f"{three_digits(row[column] / base)}x"


def _read(path: Path, parse) -> dict:
    return parse(path.read_text()) if path.is_file() else {}


def what_ran(run_dir: Path, summary: pd.DataFrame) -> dict:
    """The manifest, the resolved config (text) and the trace it replayed, for one run."""
    manifest = _read(run_dir / "manifest.json", json.loads)
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    trace = (yaml.safe_load(config_text) or {}).get("trace", {}) if config_text else {}
    packages = manifest.get("packages") or {}
    return {
        "command": manifest.get("command", "?"),
        "started": manifest.get("start_utc", "?"),
        "git": f"{manifest.get('git_commit', '?')}{' (dirty)' if manifest.get('git_dirty') else ''}",
        "model": ", ".join(map(str, summary["model"].dropna().unique())) if "model" in summary else "?",
        "trace": ", ".join(f"{k}={v}" for k, v in trace.items() if v is not None),
        "machine": f"{manifest.get('cpu', '?')} ({manifest.get('cpu_count', '?')} cores), GPU: "
                   f"{manifest.get('gpu') or 'none'}, {manifest.get('hostname', '?')}, {manifest.get('platform', '?')}",
        "versions": ", ".join(f"{k} {v}" for k, v in {"python": manifest.get("python"), **packages}.items() if v),
        "config": config_text,
    }  # fmt: skip


def _figure(fig, div_id: str) -> dict:
    """A figure for the page: its div id and its JSON (a script tag holds it, so no `</` inside)."""
    return {"id": div_id, "json": fig.to_json().replace("</", "<\\/")}


@functools.cache
def packed_plotly_js() -> str:
    """plotly.js gzipped and base64-encoded: a third of its size; the page unpacks it once with the
    browser's own DecompressionStream (report.html.j2)."""
    return base64.b64encode(gzip.compress(plotly.offline.get_plotlyjs().encode(), mtime=0)).decode("ascii")


def point_section(root: Path, run_dir: str, summary: pd.DataFrame, requests: pd.DataFrame) -> dict:
    """One run of the page: what ran, its comparison table and its figures."""
    slug = "point-" + "".join(ch if ch.isalnum() else "-" for ch in run_dir)
    timeline = pd.read_parquet(root / run_dir / "timeline.parquet")
    figures = {"latency": report_figures.latency_bars_figure(summary),
               "ttft_cdf": report_figures.ttft_cdf_figure(requests)}  # fmt: skip
    if not timeline.empty:
        figures["timeline"] = report_figures.timeline_figure(timeline)
    return {
        "run_dir": run_dir, "slug": slug, "what_ran": what_ran(root / run_dir, summary),
        "table": comparison_rows(summary, requests),
        "figures": [_figure(fig, f"{slug}-{name}") for name, fig in figures.items()],
    }  # fmt: skip


def requests_table_html(requests: pd.DataFrame, is_sweep: bool) -> str:
    """The per-request table (DataTables through itables): sortable, searchable, a filter pane per
    FILTER_COLUMNS column, rendered from JSON a page at a time."""
    shown = requests[REQUEST_COLUMNS].copy()
    if is_sweep:
        shown.insert(0, "point", requests["run_dir"])
    shown["error"] = shown["error"].astype("string").fillna("").where(shown["status"] != "finished", "")
    seconds = [c for c in shown.columns if c.endswith("_s")]
    shown[seconds] = shown[seconds].round(4)
    panes = [shown.columns.get_loc(c) for c in FILTER_COLUMNS if c in shown.columns]
    return to_html_datatable(
        shown, table_id="requests", connected=False, maxBytes=0, showIndex=False, pageLength=PAGE_LENGTH,
        classes="display compact", layout={"top1": "searchPanes"}, deferRender=True, scrollX=True,
        searchPanes={"columns": panes, "initCollapsed": False, "cascadePanes": True, "layout": f"columns-{len(panes)}"},
        columnDefs=[{"searchPanes": {"show": True}, "targets": panes}],
    )  # fmt: skip


def _with_columns(df: pd.DataFrame, columns) -> pd.DataFrame:
    """`df` with any of `columns` it lacks as NaN (tables written by hand or by an older version)."""
    return df.reindex(columns=list(dict.fromkeys([*df.columns, *columns])))


def page_context(root: Path, tables: dict[str, pd.DataFrame], x: str | None) -> dict:
    """Everything the template shows, from the gathered tables of the runs below `root`."""
    summary = _with_columns(tables["summary"], [c for c, _, _ in COLUMNS] + list(SUMMARY_FIGURE_COLUMNS))
    requests = _with_columns(tables["requests"], [*REQUEST_COLUMNS, "slo_ttft_s"])
    order = summary.sort_values([x, "run_dir"] if x else ["run_dir"], kind="stable")["run_dir"].unique()
    simulated = sorted(summary["simulated_on"].dropna().unique()) if "simulated_on" in summary else []
    return {
        "title": root.resolve().name,
        "is_sweep": len(order) > 1,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "simulated": ", ".join(simulated),
        "sweep_axis": x,
        "sweep_figures": [_figure(fig, name) for name, fig in report_figures.sweep_figures(summary, x).items()]
        if x else [],
        "points": [point_section(root, run, summary[summary["run_dir"] == run], requests[requests["run_dir"] == run])
                   for run in order],
        "requests_table": requests_table_html(requests, is_sweep=len(order) > 1),
        "n_requests": len(requests),
        "plotly_js_packed": packed_plotly_js(),
        "datatables_init": generate_init_offline_itables_html(itables_options.dt_bundle),
    }  # fmt: skip


def render(context: dict) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.results", "templates"), autoescape=True)
    return env.get_template("report.html.j2").render(**context)


def write_report(root: Path, tables: dict[str, pd.DataFrame], out_dir: Path, x: str | None = None) -> Path:
    """Write `out_dir`/report.html for the gathered `tables` of the runs below `root` (`x`: the
    sweep's axis, harness.results.gather.sweep_axis); returns its path."""
    path = Path(out_dir) / REPORT_FILE
    write_text(path, render(page_context(Path(root), tables, x)))
    return path
