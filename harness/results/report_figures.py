"""Interactive (Plotly) figures for report.html (harness.results.report), one engine one color as in
harness.results.figures, whose helpers they share. Each `*_figure` returns a plotly Figure; the page
embeds them with plotly.js inlined once.

A page must stay a few MB for thousands of requests, so a CDF is drawn through at most
CDF_POINTS quantiles and the timeline through at most TIMELINE_QUANTA quanta per engine.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from harness.results.figures import (AXIS_LABELS, CLASS_LABELS, ENGINE_LABELS, QUANTUM_COLORS, engine_color, engine_order,
                             first_preemption_window, points, preemption_rows)  # fmt: skip

CDF_POINTS = 200
TIMELINE_QUANTA = 600  # per engine: a window around the first preemption
CLASSES = ("LS", "BE")
LAYOUT = dict(template="plotly_white", height=360, margin=dict(l=60, r=20, t=50, b=50),
              legend=dict(orientation="h", y=-0.22), hovermode="closest")  # fmt: skip
TIMELINE_HEIGHT = 480
PASS_ROW = -1  # the timeline row of whole-pass quanta (final norm and LM head, or a pass without layers)


def _label(engine: str) -> str:
    return ENGINE_LABELS.get(engine, engine)


def _vs_x_panels(summary: pd.DataFrame, x: str, panels, title: str, log_y: bool = False) -> go.Figure:
    """One panel per (metric, class, panel title, scale): the mean over replicates against x, min-max bars."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[2] for p in panels])
    for col, (metric, cls, _, scale) in enumerate(panels, start=1):
        data = points(summary, x, metric, cls)
        for engine in engine_order(data["engine"]):
            d = data[data["engine"] == engine]
            fig.add_trace(go.Scatter(
                x=d[x], y=scale * d["mean"], mode="lines+markers", name=_label(engine), legendgroup=engine,
                showlegend=col == 1, line=dict(color=engine_color(engine)),
                error_y=dict(type="data", symmetric=False, array=scale * (d["max"] - d["mean"]),
                             arrayminus=scale * (d["mean"] - d["min"])),
            ), row=1, col=col)  # fmt: skip
        fig.update_xaxes(title_text=AXIS_LABELS.get(x, x), row=1, col=col)
    if log_y:
        fig.update_yaxes(type="log")
    return fig.update_layout(title=title, **LAYOUT)


def sweep_figures(summary: pd.DataFrame, x: str) -> dict[str, go.Figure]:
    """The rate-style figures of a sweep: TTFT, SLO attainment and throughput against `x`."""
    return {
        "ttft_vs_x": _vs_x_panels(summary, x, [("ttft_s_p50", c, CLASS_LABELS[c], 1.0) for c in CLASSES],
                                  "TTFT p50 (s, log scale)", log_y=True),
        "slo_vs_x": _vs_x_panels(summary, x, [("slo_attainment", "LS", "LS requests meeting the TTFT SLO", 100.0)],
                                 "SLO attainment (%)"),
        "throughput_vs_x": _vs_x_panels(summary, x, [("throughput_tok_s", "all", "generated tokens/s", 1.0),
                                                     ("goodput_rps", "all", "goodput (req/s meeting their SLOs)", 1.0)],
                                        "throughput and goodput"),
    }  # fmt: skip


def ttft_cdf_figure(requests: pd.DataFrame) -> go.Figure:
    """Empirical CDF of TTFT per engine, a panel per class, through at most CDF_POINTS quantiles."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=[CLASS_LABELS[c] for c in CLASSES])
    share = np.linspace(0.0, 1.0, CDF_POINTS)
    for col, cls in enumerate(CLASSES, start=1):
        rows = requests[(requests["priority_class"] == cls) & requests["ttft_s"].notna()]
        for engine in engine_order(rows["engine"]):
            ttft = rows.loc[rows["engine"] == engine, "ttft_s"].to_numpy()
            fig.add_trace(go.Scatter(
                x=np.quantile(ttft, share), y=share, mode="lines", name=_label(engine), legendgroup=engine,
                showlegend=col == 1, line=dict(color=engine_color(engine), shape="hv"),
                hovertemplate="TTFT %{x:.4g} s<br>share %{y:.2f}",
            ), row=1, col=col)  # fmt: skip
        slo = rows["slo_ttft_s"].dropna()
        if len(slo):
            fig.add_vline(x=float(slo.iloc[0]), line_dash="dash", line_color="black", row=1, col=col,
                          annotation_text=f"SLO {slo.iloc[0]:g} s")  # fmt: skip
    fig.update_xaxes(type="log", title_text="TTFT (s, log scale)")
    fig.update_yaxes(title_text="share of finished requests", row=1, col=1)
    return fig.update_layout(title="TTFT distribution", **LAYOUT)


def latency_bars_figure(summary: pd.DataFrame) -> go.Figure:
    """Turnaround and TTFT p50 (bar) with p99 (whisker) per engine, grouped by class."""
    metrics = (("e2e_s", "turnaround (s)"), ("ttft_s", "TTFT (s)"))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[label for _, label in metrics])
    for col, (metric, _) in enumerate(metrics, start=1):
        for engine in engine_order(summary["engine"]):
            rows = summary[(summary["engine"] == engine) & summary["priority_class"].isin(CLASSES)]
            p50, p99 = rows[f"{metric}_p50"], rows[f"{metric}_p99"]
            fig.add_trace(go.Bar(
                x=rows["priority_class"], y=p50, name=_label(engine), legendgroup=engine, showlegend=col == 1,
                marker_color=engine_color(engine), error_y=dict(type="data", symmetric=False, array=p99 - p50),
                hovertemplate="%{x}: p50 %{y:.4g} s, p99 %{customdata:.4g} s", customdata=p99,
            ), row=1, col=col)  # fmt: skip
    return fig.update_layout(title="p50 (bars) and p99 (whiskers)", barmode="group", **LAYOUT)


def timeline_window(timeline: pd.DataFrame) -> tuple[float, float]:
    """Around the first preemption of any engine (the run's start without one), TIMELINE_QUANTA quanta long."""
    window = first_preemption_window(timeline, quanta_before=TIMELINE_QUANTA // 10,
                                     quanta_after=TIMELINE_QUANTA - TIMELINE_QUANTA // 10)  # fmt: skip
    if window is not None:
        return window
    first = timeline[timeline["engine"] == engine_order(timeline["engine"])[0]].sort_values("t_start_s")
    return float(first["t_start_s"].iloc[0]), float(first["t_end_s"].iloc[: TIMELINE_QUANTA].max())


def _segments(rows: pd.DataFrame) -> tuple[list, list]:
    """x, y of one line per quantum (start to end at its layer row), None between them."""
    x, y = [], []
    for start, end, layer in zip(rows["t_start_s"], rows["t_end_s"], rows["row"]):
        x += [start, end, None]
        y += [layer, layer, None]
    return x, y


def _engine_traces(rows: pd.DataFrame, engine: str, visible: bool) -> list:
    """An engine's quanta by color (LS or BE-only batch x kind), then preemption and resume marks."""
    has_ls = rows["num_ls"].fillna(0).astype(int) > 0
    traces = []
    for (is_ls, kind), color in QUANTUM_COLORS.items():
        x, y = _segments(rows[(has_ls == is_ls) & (rows["kind"] == kind)])
        traces.append(go.Scatter(x=x, y=y, mode="lines", line=dict(color=color, width=10), visible=visible,
                                 name=f"{'LS' if is_ls else 'BE-only'} {kind}", hoverinfo="x+name"))  # fmt: skip
    preempted, resumed = rows[preemption_rows(rows).astype(bool)], rows[rows["is_resume"].astype(bool)]
    traces.append(go.Scatter(x=preempted["t_end_s"], y=preempted["row"], mode="markers", name="preempted",
                             marker=dict(symbol="x", size=9, color="black"), visible=visible))  # fmt: skip
    traces.append(go.Scatter(x=resumed["t_start_s"], y=resumed["row"], mode="markers", name="resumed",
                             marker=dict(symbol="triangle-right", size=9, color="#1a9850"), visible=visible))  # fmt: skip
    return traces


def timeline_figure(timeline: pd.DataFrame) -> go.Figure:
    """What ran when, one engine at a time (a menu picks it): time on x, decoder layer on y, a quantum
    as a bar colored by kind and by whether its batch holds LS work; x = preempted, triangle = resumed."""
    start, end = timeline_window(timeline)
    shown = timeline[(timeline["t_end_s"] >= start) & (timeline["t_start_s"] <= end)]
    shown = shown.assign(row=shown["layer"].astype("float").fillna(PASS_ROW))
    engines = engine_order(timeline["engine"])
    fig, per_engine = go.Figure(), []
    for i, engine in enumerate(engines):
        traces = _engine_traces(shown[shown["engine"] == engine], engine, visible=i == 0)
        fig.add_traces(traces)
        per_engine.append(len(traces))
    buttons = []
    for i, engine in enumerate(engines):
        visible = [j == i for j, n in enumerate(per_engine) for _ in range(n)]
        buttons.append(dict(label=_label(engine), method="update", args=[{"visible": visible}]))
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=0, y=1.18, xanchor="left", showactive=True)])
    fig.update_xaxes(title_text="time since the first arrival (s); drag to zoom, double-click to reset")
    fig.update_yaxes(title_text=f"layer ({PASS_ROW}: whole pass)", dtick=1 if shown["row"].max() < 16 else None)
    fig.update_layout(title=dict(text=f"timeline, {start:.3g} s to {end:.3g} s", x=0.5), **LAYOUT)
    return fig.update_layout(height=TIMELINE_HEIGHT)
