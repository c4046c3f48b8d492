"""Paper-style figures from result tables (harness.results.metrics), one engine one color throughout.

Each `*_figure` function takes plot-ready tables and returns a matplotlib Figure; `save_figure`
writes it as PNG and PDF. Rate-style figures take `x`, the swept column (rate, ls_fraction,
burstiness, offered_rps, ...); replicates at one x (seeds) are averaged, with min-max bars,
and a summary with 95 % intervals (`repeats=N`, harness.results.repeats) adds a shaded band per engine.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # figures without pyplot: no backend, no global figure list
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.results.atomic import atomic_write
from harness.results.repeats import has_intervals, interval_columns

# Fixed engine -> color (and legend label), so an engine looks the same in every figure.
ENGINE_COLORS = {
    "qllm": "#d62728", "fcfs_rtc": "#1f77b4", "fcfs_cb": "#2ca02c",
    "priority_cb": "#9467bd", "hf_generate": "#7f7f7f", "qllm_prototype": "#ff9896",
    "qllm_slo_slack": "#8c564b", "qllm_aging": "#e377c2", "qllm_iteration": "#ffbb78", "qllm_expert": "#7b0000",
}  # fmt: skip
ENGINE_LABELS = {
    "qllm": "QLLM (layer preemption)", "fcfs_rtc": "FCFS run-to-completion (paper baseline)",
    "fcfs_cb": "FCFS continuous batching", "priority_cb": "priority continuous batching",
    "hf_generate": "HF generate (static batches)", "qllm_prototype": "QLLM, the prototype's batch order",
    "qllm_slo_slack": "QLLM, SLO-slack preemption", "qllm_aging": "QLLM with BE aging",
    "qllm_iteration": "QLLM (iteration: no mid-pass preemption)", "qllm_expert": "QLLM (expert preemption)",
}  # fmt: skip
EXTRA_COLORS = ("#ff7f0e", "#bcbd22", "#17becf", "#aec7e8", "#98df8a")  # engines not listed above
CLASS_LABELS = {"LS": "latency-sensitive (LS)", "BE": "best-effort (BE)", "all": "all requests"}
AXIS_LABELS = {
    "rate": "request rate (req/s)", "offered_rps": "offered load (req/s)", "ls_fraction": "share of LS requests",
    "burstiness": "burstiness (Gamma shape; <1 burstier)", "time_scale": "trace time scale",
}  # fmt: skip
# Timeline boxes: (batch holds an LS request, kind) -> color.
QUANTUM_COLORS = {
    (True, "prefill"): "#b2182b", (True, "decode"): "#f4a582", (True, "mixed"): "#d6604d",
    (False, "prefill"): "#2166ac", (False, "decode"): "#92c5de", (False, "mixed"): "#4393c3",
}  # fmt: skip
PANEL_SIZE = (4.8, 3.4)  # inches per panel
BAND_PREFIX = "_ci95 "  # label of an engine's interval band: "_" keeps it out of legends


def engine_color(engine: str) -> str:
    """The engine's fixed color; an unknown engine gets one from a stable hash of its name."""
    return ENGINE_COLORS.get(engine) or EXTRA_COLORS[zlib.crc32(engine.encode()) % len(EXTRA_COLORS)]


def engine_order(engines) -> list[str]:
    """Known engines in ENGINE_COLORS order, then the others sorted."""
    present = set(engines)
    return [e for e in ENGINE_COLORS if e in present] + sorted(present - set(ENGINE_COLORS))


def save_figure(fig: Figure, out_dir: Path, name: str) -> Path:
    """Write `<name>.png` and `<name>.pdf` into `out_dir`, close the figure; returns the PNG path."""
    out_dir = Path(out_dir)
    atomic_write(out_dir / f"{name}.pdf", lambda tmp: fig.savefig(tmp, format="pdf", bbox_inches="tight"))
    return atomic_write(out_dir / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))


def _panels(num: int, sharey: bool = False) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL_SIZE[0] * num, PANEL_SIZE[1]))
    return fig, fig.subplots(1, num, squeeze=False, sharey=sharey)[0]


def points(summary: pd.DataFrame, x: str, metric: str, priority_class: str) -> pd.DataFrame:
    """engine, x, mean/min/max of `metric` over the replicates at each x, for one class; where the
    summary has the metric's 95 % interval over repeats, ci95_low/ci95_high too (averaged over
    the replicates: one run per x gives its own interval)."""
    rows = summary[summary["priority_class"] == priority_class].dropna(subset=[x])
    stats = {"mean": (metric, "mean"), "min": (metric, "min"), "max": (metric, "max")}
    if has_intervals(rows, metric):
        low, high = interval_columns(metric)
        stats |= {"ci95_low": (low, "mean"), "ci95_high": (high, "mean")}
    grouped = rows.groupby(["engine", x]).agg(**stats).reset_index()
    return grouped.sort_values(["engine", x])


def _legend(fig: Figure) -> None:
    """One legend below the panels, each label once (no legend when nothing is labelled)."""
    labelled = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    fig.tight_layout()
    if labelled:
        fig.legend(labelled.values(), labelled.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(3, len(labelled)), fontsize=8, frameon=False)


def _plot_lines(ax, summary: pd.DataFrame, x: str, metric: str, priority_class: str, scale: float = 1.0) -> None:
    data = points(summary, x, metric, priority_class)
    if data.empty:
        ax.text(0.5, 0.5, f"no {priority_class} requests", ha="center", va="center", transform=ax.transAxes)
    for engine in engine_order(data["engine"]):
        d = data[data["engine"] == engine]
        err = [scale * (d["mean"] - d["min"]), scale * (d["max"] - d["mean"])]
        label = ENGINE_LABELS.get(engine, engine)
        ax.errorbar(d[x], scale * d["mean"], yerr=err, marker="o", ms=4, capsize=2, color=engine_color(engine), label=label)
        if "ci95_low" in d:  # the 95 % interval over repeats; "_": kept out of the legend
            ax.fill_between(d[x], scale * d["ci95_low"], scale * d["ci95_high"], color=engine_color(engine),
                            alpha=0.2, linewidth=0, label=f"{BAND_PREFIX}{label}")
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.grid(True, alpha=0.3)


def ttft_vs_x_figure(summary: pd.DataFrame, x: str = "rate", stat: str = "mean", slo_s: float | None = None) -> Figure:
    """TTFT (`stat`: mean, p50, p90 or p99) against `x`, one panel per class (LS, BE), log scale."""
    fig, axes = _panels(2)
    for ax, cls in zip(axes, ("LS", "BE")):
        _plot_lines(ax, summary, x, f"ttft_s_{stat}", cls)
        if cls == "LS" and slo_s:
            ax.axhline(slo_s, color="black", ls="--", lw=1, label=f"LS TTFT SLO ({slo_s:g} s)")
        ax.set_yscale("log" if ax.has_data() else "linear")
        ax.set_ylabel(f"TTFT {stat} (s, log scale)")
        ax.set_title(CLASS_LABELS[cls])
    _legend(fig)
    return fig


def slo_vs_x_figure(summary: pd.DataFrame, x: str = "rate") -> Figure:
    """Share of LS requests meeting their TTFT SLO against `x`."""
    fig, axes = _panels(1)
    _plot_lines(axes[0], summary, x, "slo_attainment", "LS", scale=100.0)
    axes[0].set_ylim(-3, 103)
    axes[0].set_ylabel("LS requests meeting the TTFT SLO (%)")
    _legend(fig)
    return fig


def throughput_vs_x_figure(summary: pd.DataFrame, x: str = "rate") -> Figure:
    """Generated tokens per second and finished requests per second (all classes) against `x`."""
    fig, axes = _panels(2)
    for ax, metric, label in zip(axes, ("throughput_tok_s", "throughput_rps"),
                                 ("throughput (generated tokens/s)", "throughput (finished req/s)")):
        _plot_lines(ax, summary, x, metric, "all")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    _legend(fig)
    return fig


def _bar_span(rows: pd.DataFrame, metric: str) -> tuple[float, float]:
    """What a bar's error bar spans: the mean 95 % interval over repeats, else the replicates' range."""
    if has_intervals(rows, metric):
        return tuple(rows[column].mean() for column in interval_columns(metric))
    return rows[metric].min(), rows[metric].max()


def turnaround_figure(summary: pd.DataFrame, stat: str = "mean", title: str | None = None) -> Figure:
    """Turnaround (arrival to last token) per engine, grouped by class; bars span the replicates,
    or the 95 % interval over repeats where the summary has one (harness.results.repeats)."""
    classes = [c for c in ("LS", "BE") if c in set(summary["priority_class"])]
    engines = engine_order(summary["engine"])
    fig, axes = _panels(1)
    width = 0.8 / max(len(engines), 1)
    metric = f"e2e_s_{stat}"
    for i, engine in enumerate(engines):
        rows = summary[summary["engine"] == engine]
        per_class = [rows[rows["priority_class"] == c] for c in classes]
        means = [r[metric].mean() for r in per_class]
        spans = [_bar_span(r, metric) for r in per_class]
        err = [[m - lo for m, (lo, _) in zip(means, spans)], [hi - m for m, (_, hi) in zip(means, spans)]]
        axes[0].bar(np.arange(len(classes)) + (i - (len(engines) - 1) / 2) * width, means, width, yerr=err,
                    capsize=2, color=engine_color(engine), label=ENGINE_LABELS.get(engine, engine))
    axes[0].set_xticks(np.arange(len(classes)), [CLASS_LABELS[c] for c in classes])
    axes[0].set_ylabel(f"turnaround {stat} (s)")
    axes[0].set_title(title or "")
    _legend(fig)
    return fig


def ttft_cdf_figure(requests: pd.DataFrame) -> Figure:
    """Empirical CDF of TTFT per engine, one panel per class (finished requests), log x."""
    fig, axes = _panels(2, sharey=True)
    for ax, cls in zip(axes, ("LS", "BE")):
        rows = requests[(requests["priority_class"] == cls) & requests["ttft_s"].notna()]
        for engine in engine_order(rows["engine"]):
            ttft = np.sort(rows.loc[rows["engine"] == engine, "ttft_s"].to_numpy())
            share = np.arange(1, len(ttft) + 1) / len(ttft)
            ax.step(ttft, share, where="post", color=engine_color(engine), label=ENGINE_LABELS.get(engine, engine))
        slo = rows["slo_ttft_s"].dropna()
        if len(slo):
            ax.axvline(slo.iloc[0], color="black", ls="--", lw=1, label=f"TTFT SLO ({slo.iloc[0]:g} s)")
        ax.set_xscale("log")
        ax.set_xlabel("TTFT (s, log scale)")
        ax.set_title(CLASS_LABELS[cls])
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("share of requests")
    _legend(fig)
    return fig


def preemption_rows(timeline: pd.DataFrame) -> pd.Series:
    """True for quanta after which their batch was set aside mid-pass (another batch ran next).

    A pass is its layer quanta then a whole-batch quantum (layer NA: final norm and LM head),
    so a layer quantum followed by a different batch is a preemption; not one followed by a batch
    holding its sequences and more (a catch-up pass's end, its rows joining the batch it caught up
    with). `timeline` holds one engine.
    """
    ordered = timeline.sort_values("t_start_s")
    batch = list(ordered["request_ids"].map(frozenset))
    set_aside = [later is not None and not now <= later for now, later in zip(batch, [*batch[1:], None])]
    preempted = ordered["layer"].notna() & pd.Series(set_aside, index=ordered.index, dtype=bool)
    return preempted.reindex(timeline.index)


def _timeline_panel(ax, timeline: pd.DataFrame, num_rows: int) -> None:
    """Boxes per quantum at its layer row (whole-pass quanta span every row), marks, labels."""
    has_ls = timeline["num_ls"].fillna(0) > 0
    for (is_ls, kind), color in QUANTUM_COLORS.items():
        part = timeline[(has_ls == is_ls) & (timeline["kind"] == kind)]
        for layer, rows in part.groupby(part["layer"].fillna(-1)):
            y0, height = (-0.45, num_rows - 0.1) if layer < 0 else (layer - 0.45, 0.9)
            spans = list(zip(rows["t_start_s"], rows["duration_s"]))
            ax.broken_barh(spans, (y0, height), facecolors=color, edgecolor="white", linewidth=0.3)
    preempted = timeline[preemption_rows(timeline)]
    resumed = timeline[timeline["is_resume"].astype(bool)]
    ax.plot(preempted["t_end_s"], preempted["layer"].astype(float), "kx", ms=7, mew=2)
    ax.plot(resumed["t_start_s"], resumed["layer"].fillna(0).astype(float), ">", color="#1a9850", ms=7)
    ax.set_ylim(-0.6, num_rows - 0.4)
    ax.set_yticks(range(num_rows))
    ax.set_ylabel("layer")


def timeline_figure(timeline: pd.DataFrame, window_s: tuple[float, float] | None = None,
                    ls_arrivals_s: pd.DataFrame | None = None) -> Figure:
    """Gantt chart of one run: a panel per engine, time on x, decoder layer on y.

    Boxes are quanta colored by kind (prefill/decode/mixed) and by whether the batch holds LS work;
    x marks a preemption, a green triangle a resume (is_resume). `ls_arrivals_s` (engine,
    arrival_s of LS requests) draws LS arrivals as dotted lines. `window_s` zooms in.
    """
    engines = engine_order(timeline["engine"])
    num_rows = int(timeline["layer"].max()) + 1 if timeline["layer"].notna().any() else 1
    fig = Figure(figsize=(11, 1.0 + (0.35 * num_rows + 0.6) * len(engines)))
    axes = fig.subplots(len(engines), 1, sharex=True, squeeze=False)
    for ax, engine in zip(axes[:, 0], engines):
        rows = timeline[timeline["engine"] == engine]
        if window_s is not None:
            rows = rows[(rows["t_end_s"] >= window_s[0]) & (rows["t_start_s"] <= window_s[1])]
        _timeline_panel(ax, rows, num_rows)
        if ls_arrivals_s is not None:
            for t in ls_arrivals_s.loc[ls_arrivals_s["engine"] == engine, "arrival_s"]:
                ax.axvline(t, color="#b2182b", ls=":", lw=1)
        ax.set_title(ENGINE_LABELS.get(engine, engine), fontsize=9, loc="left", color=engine_color(engine))
    if window_s is not None:
        axes[0, 0].set_xlim(*window_s)
    axes[-1, 0].set_xlabel("time since the first arrival (s)")
    legend = [Patch(color=c, label=f"{'LS' if ls else 'BE-only'} {kind}") for (ls, kind), c in QUANTUM_COLORS.items()]
    legend += [Line2D([], [], color="k", marker="x", ls="", label="preempted"),
               Line2D([], [], color="#1a9850", marker=">", ls="", label="resumed"),
               Line2D([], [], color="#b2182b", ls=":", label="LS arrival")]
    if ls_arrivals_s is None:
        legend.pop()
    fig.tight_layout()
    fig.legend(handles=legend, loc="upper center", ncol=len(legend), fontsize=7, bbox_to_anchor=(0.5, 0.0), frameon=False)
    return fig


def first_preemption_window(timeline: pd.DataFrame, quanta_before: int = 20, quanta_after: int = 60):
    """(start, end) from `quanta_before` quanta before the first preemption of any engine to
    `quanta_after` after it, counted in the preempting engine's quanta (so the window suits any
    step time); None if nothing was preempted."""
    candidates = []  # (time of the engine's first preemption, window start, window end)
    for _, rows in timeline.groupby("engine"):
        ordered = rows.sort_values("t_start_s").reset_index(drop=True)
        preempted = preemption_rows(ordered).astype(bool)
        if preempted.any():
            i = int(preempted.idxmax())
            start = ordered["t_start_s"].iloc[max(i - quanta_before, 0)]
            end = ordered["t_end_s"].iloc[min(i + quanta_after, len(ordered) - 1)]
            candidates.append((ordered["t_end_s"].iloc[i], float(start), float(end)))
    return min(candidates)[1:] if candidates else None


def plotted_lines(fig: Figure) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """The series a line figure plots: (panel title or y label, legend label) -> (x, y), so a figure
    can be checked against, or exported beside, the table it came from."""
    series = {}
    for ax in fig.axes:
        panel = ax.get_title() or ax.get_ylabel()
        for handle, label in zip(*ax.get_legend_handles_labels()):
            line = handle.lines[0] if hasattr(handle, "lines") else handle  # an errorbar's data line
            if isinstance(line, Line2D) and len(line.get_xdata()):
                series[panel, label] = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
    return series


def plotted_bands(fig: Figure) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The interval bands a line figure shades: (panel title or y label, legend label) ->
    (x, low, high), read back from each band's polygon."""
    bands = {}
    for ax in fig.axes:
        panel = ax.get_title() or ax.get_ylabel()
        for band in ax.collections:
            if band.get_label().startswith(BAND_PREFIX) and band.get_paths():
                corners = np.concatenate([path.vertices for path in band.get_paths()])
                xs = np.unique(corners[:, 0])
                low = np.array([corners[corners[:, 0] == x, 1].min() for x in xs])
                high = np.array([corners[corners[:, 0] == x, 1].max() for x in xs])
                bands[panel, band.get_label().removeprefix(BAND_PREFIX)] = (xs, low, high)
    return bands
