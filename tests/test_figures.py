"""harness.results.figures: every figure draws from hand-made tables and is written as PNG and PDF."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.results import figures

ENGINES = ["qllm", "fcfs_rtc", "priority_cb"]


def sweep_summary() -> pd.DataFrame:
    """Two seeds x three rates x engines x classes, with numbers that grow with the rate."""
    rows = []
    for engine_index, engine in enumerate(ENGINES):
        for rate in (1.0, 2.0, 4.0):
            for seed in (0, 1):
                for cls in ("LS", "BE", "all"):
                    ttft = 0.05 * rate * (engine_index + 1) + 0.01 * seed
                    rows.append({
                        "run_id": f"r{rate}-{seed}", "engine": engine, "rate": rate, "seed": seed,
                        "priority_class": cls, "ttft_s_mean": ttft, "ttft_s_p50": ttft, "e2e_s_mean": 2 * ttft,
                        "slo_attainment": 1.0 - 0.1 * rate * engine_index / 4,
                        "throughput_tok_s": 100 * rate, "throughput_rps": rate,
                    })  # fmt: skip
    return pd.DataFrame(rows)


def requests_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"engine": e, "priority_class": c, "ttft_s": rng.uniform(0.01, 2.0), "slo_ttft_s": 0.5 if c == "LS" else np.nan}
            for e in ENGINES for c in ("LS", "BE") for _ in range(5)]  # fmt: skip
    return pd.DataFrame(rows)


def quantum(engine, t, layer, ids, kind="decode", is_resume=False, num_ls=0):
    return {"engine": engine, "t_start_s": t, "t_end_s": t + 0.1, "duration_s": 0.1, "kind": kind,
            "layer": layer, "request_ids": ids, "is_resume": is_resume, "num_ls": num_ls}  # fmt: skip


def timeline_table() -> pd.DataFrame:
    """QLLM: BE batch [a, b] preempted after layer 0, LS prefill [c] runs, [a, b] resumes at layer 1."""
    rows = [
        quantum("qllm", 0.0, 0, ["a", "b"]),
        quantum("qllm", 0.1, 0, ["c"], kind="prefill", num_ls=1),
        quantum("qllm", 0.2, 1, ["c"], kind="prefill", num_ls=1),
        quantum("qllm", 0.3, None, ["c"], kind="prefill", num_ls=1),
        quantum("qllm", 0.4, 1, ["b", "a"], is_resume=True),
        quantum("qllm", 0.5, None, ["a", "b"]),
        quantum("fcfs_rtc", 0.0, None, ["a", "b"], kind="prefill"),
        quantum("fcfs_rtc", 0.1, None, ["a", "b"]),
    ]
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    df["num_ls"] = df["num_ls"].astype("Int64")
    return df


def test_engine_colors_are_fixed_distinct_and_stable_for_unknown_engines():
    assert figures.engine_color("qllm") == figures.ENGINE_COLORS["qllm"]
    assert len(set(figures.ENGINE_COLORS.values())) == len(figures.ENGINE_COLORS)
    assert figures.engine_color("my_new_policy") == figures.engine_color("my_new_policy")
    assert figures.engine_color("my_new_policy") in figures.EXTRA_COLORS
    assert figures.engine_order(["zeta", "fcfs_rtc", "qllm"]) == ["qllm", "fcfs_rtc", "zeta"]


def test_points_average_replicates_with_min_and_max():
    data = figures.points(sweep_summary(), "rate", "ttft_s_mean", "LS")
    qllm_at_1 = data[(data["engine"] == "qllm") & (data["rate"] == 1.0)].iloc[0]
    assert qllm_at_1["min"] == pytest.approx(0.05) and qllm_at_1["max"] == pytest.approx(0.06)
    assert qllm_at_1["mean"] == pytest.approx(0.055)


def test_preemption_rows_mark_a_batch_set_aside_mid_pass():
    timeline = timeline_table()
    preempted = figures.preemption_rows(timeline[timeline["engine"] == "qllm"])
    assert preempted.tolist() == [True, False, False, False, False, False]
    assert figures.first_preemption_window(timeline, quanta_before=1, quanta_after=2) == pytest.approx((0.0, 0.3))
    assert figures.first_preemption_window(timeline) == pytest.approx((0.0, 0.6))  # clipped to the run
    assert figures.first_preemption_window(timeline[timeline["engine"] == "fcfs_rtc"]) is None


@pytest.mark.parametrize("name", ["ttft_vs_rate", "slo_vs_rate", "throughput_vs_rate", "turnaround", "ttft_cdf",
                                  "timeline", "timeline_zoom"])  # fmt: skip
def test_every_figure_is_written_as_png_and_pdf(tmp_path, name):
    summary = sweep_summary()
    draw = {
        "ttft_vs_rate": lambda: figures.ttft_vs_x_figure(summary, "rate", slo_s=0.5),
        "slo_vs_rate": lambda: figures.slo_vs_x_figure(summary, "rate"),
        "throughput_vs_rate": lambda: figures.throughput_vs_x_figure(summary, "rate"),
        "turnaround": lambda: figures.turnaround_figure(summary[summary["rate"] == 4.0]),
        "ttft_cdf": lambda: figures.ttft_cdf_figure(requests_table()),
        "timeline": lambda: figures.timeline_figure(timeline_table()),
        "timeline_zoom": lambda: figures.timeline_figure(
            timeline_table(), window_s=(0.0, 0.3), ls_arrivals_s=pd.DataFrame({"engine": ["qllm"], "arrival_s": [0.05]})),
    }
    png = figures.save_figure(draw[name](), tmp_path, name)
    assert png == tmp_path / f"{name}.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and (tmp_path / f"{name}.pdf").read_bytes()[:4] == b"%PDF"


def expected_points(summary, metric, cls, engine, scale=1.0):
    rows = summary[(summary["engine"] == engine) & (summary["priority_class"] == cls)]
    means = rows.groupby("rate")[metric].mean()
    return means.index.to_numpy(float), scale * means.to_numpy(float)


@pytest.mark.parametrize("draw, metric, panels", [
    (lambda s: figures.ttft_vs_x_figure(s, "rate"), "ttft_s_mean",
     {figures.CLASS_LABELS["LS"]: "LS", figures.CLASS_LABELS["BE"]: "BE"}),
    (lambda s: figures.slo_vs_x_figure(s, "rate"), "slo_attainment", {"LS requests meeting the TTFT SLO (%)": "LS"}),
    (lambda s: figures.throughput_vs_x_figure(s, "rate"), "throughput_tok_s", {"throughput (generated tokens/s)": "all"}),
])  # fmt: skip
def test_a_rate_figure_plots_each_engines_mean_over_replicates_from_its_table(draw, metric, panels):
    summary = sweep_summary()
    plotted = figures.plotted_lines(draw(summary))
    scale = 100.0 if metric == "slo_attainment" else 1.0
    for panel, cls in panels.items():
        for engine in ENGINES:
            x, y = plotted[panel, figures.ENGINE_LABELS[engine]]
            expected_x, expected_y = expected_points(summary, metric, cls, engine, scale)
            np.testing.assert_allclose(x, expected_x)
            np.testing.assert_allclose(y, expected_y)


def test_the_ttft_cdf_steps_through_each_engines_sorted_ttfts():
    requests = requests_table()
    plotted = figures.plotted_lines(figures.ttft_cdf_figure(requests))
    for engine in ENGINES:
        ttft = requests.loc[(requests["engine"] == engine) & (requests["priority_class"] == "LS"), "ttft_s"]
        x, y = plotted[figures.CLASS_LABELS["LS"], figures.ENGINE_LABELS[engine]]
        np.testing.assert_allclose(x, np.sort(ttft))
        np.testing.assert_allclose(y, np.arange(1, len(ttft) + 1) / len(ttft))


def test_the_turnaround_bars_are_each_engines_mean_per_class():
    summary = sweep_summary()[sweep_summary()["rate"] == 4.0]
    ax = figures.turnaround_figure(summary).axes[0]
    heights = {}
    for container in ax.containers:
        if hasattr(container, "patches"):
            heights[container.get_label()] = [patch.get_height() for patch in container.patches]
    for engine in ENGINES:
        rows = summary[summary["engine"] == engine]
        expected = [rows.loc[rows["priority_class"] == c, "e2e_s_mean"].mean() for c in ("LS", "BE")]
        np.testing.assert_allclose(heights[figures.ENGINE_LABELS[engine]], expected)


def test_with_intervals_over_repeats_the_turnaround_bars_span_them():
    summary = sweep_summary()
    summary = summary[(summary["rate"] == 4.0) & (summary["seed"] == 0)].assign(
        e2e_s_mean_ci95_low=lambda s: 0.8 * s["e2e_s_mean"], e2e_s_mean_ci95_high=lambda s: 1.5 * s["e2e_s_mean"])
    ax = figures.turnaround_figure(summary).axes[0]
    spans = {c.get_label(): [tuple(seg[:, 1]) for seg in c.errorbar.lines[2][0].get_segments()]
             for c in ax.containers if hasattr(c, "patches")}  # fmt: skip
    for engine in ENGINES:
        rows = summary[summary["engine"] == engine].set_index("priority_class").loc[["LS", "BE"]]
        expected = list(zip(rows["e2e_s_mean_ci95_low"], rows["e2e_s_mean_ci95_high"]))
        np.testing.assert_allclose(spans[figures.ENGINE_LABELS[engine]], expected)


def test_the_timeline_draws_one_box_per_quantum_at_its_time():
    timeline = timeline_table()
    fig = figures.timeline_figure(timeline)
    for ax, engine in zip(fig.axes, figures.engine_order(timeline["engine"])):
        drawn = sorted((round(x, 6), round(w, 6)) for c in ax.collections for path in c.get_paths()
                       for (x, _), (w, _) in [(path.vertices[0], path.vertices[2] - path.vertices[0])])  # fmt: skip
        rows = timeline[timeline["engine"] == engine]
        assert drawn == sorted(zip(rows["t_start_s"].round(6), rows["duration_s"].round(6)))


def test_a_class_without_requests_gets_a_note_not_an_error(tmp_path):
    summary = sweep_summary()
    figure = figures.ttft_vs_x_figure(summary[summary["priority_class"] != "LS"], "rate")
    assert any("no LS requests" in t.get_text() for t in figure.axes[0].texts)
    figures.save_figure(figure, tmp_path, "no_ls")
