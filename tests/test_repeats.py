"""`repeats=N` (harness.results.repeats): each point replayed over N trace seeds; the summary is each
metric's mean over the repeats with its Student-t 95 % interval, the figures shade that interval
and the comparison table prints mean ± half of it. Simulated runs: the same path as a real one,
in a fraction of the time."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats

from harness.results import figures, gather
from harness.results.comparison import comparison_table
from harness.results.metrics import summary_table
from harness.results.repeats import PER_REPEAT_TABLE, mean_interval
from harness.results.run_dir import read_run
from harness.traces.workload import load_workload
from qllm.errors import ConfigurationError

SIM = ("executor=sim", "hardware=a100_80gb", "engine=[qllm,fcfs_rtc]", "trace.num_requests=24", "trace.rate=20",
       "trace.ls_fraction=0.3", "trace.seed=5", "warmup_tokens=0")  # fmt: skip
REPEATS = 3


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """A simulated run with repeats=3, as written to disk, and its resolved config."""
    from harness.app import compose_config, run_benchmark
    from tests.helpers import APP_SHRINK

    run_dir = tmp_path_factory.mktemp("repeats")
    cfg = compose_config(*APP_SHRINK, *SIM, f"repeats={REPEATS}")
    run_benchmark(cfg, run_dir, model_name="tiny_mixtral")
    return read_run(run_dir), cfg


def metric_columns(summary: pd.DataFrame) -> list[str]:
    return [c for c in summary.columns if f"{c}_ci95_low" in summary.columns]


def test_each_repeat_replays_the_trace_drawn_with_its_own_seed(repeated):
    tables, cfg = repeated
    requests = tables["requests"]
    assert sorted(requests["repeat"].unique()) == list(range(REPEATS))
    for repeat, rows in requests.groupby("repeat"):
        trace = load_workload(OmegaConf.merge(cfg.trace, {"seed": cfg.trace.seed + repeat}))
        for _, engine_rows in rows.groupby("engine"):
            np.testing.assert_allclose(engine_rows["arrival_s"], trace["arrival_s"])
            assert engine_rows["priority_class"].tolist() == trace["priority_class"].tolist()
    first_arrivals = requests[requests["engine"] == "qllm"].groupby("repeat")["arrival_s"].apply(tuple)
    assert first_arrivals.nunique() == REPEATS  # three different draws, not one trace three times
    assert set(tables["timeline"]["repeat"]) == set(range(REPEATS))


def test_the_per_repeat_summaries_are_each_repeats_own(repeated):
    tables, _ = repeated
    per_repeat = tables[PER_REPEAT_TABLE]
    for (engine, repeat), rows in tables["requests"].groupby(["engine", "repeat"]):
        own = per_repeat[(per_repeat["engine"] == engine) & (per_repeat["repeat"] == repeat)]
        expected = summary_table(rows.drop(columns="repeat"), {}, {})  # ITL and gauges need the recorder
        for metric in ("ttft_s_p50", "ttft_s_p99", "e2e_s_mean", "slo_attainment", "throughput_tok_s"):
            np.testing.assert_allclose(own[metric].to_numpy(float), expected[metric].to_numpy(float))
    assert per_repeat["slo_attainment"].notna().any()  # the run judged an SLO: the check above compared numbers


def test_the_summary_is_the_mean_over_repeats_with_a_student_t_interval(repeated):
    tables, _ = repeated
    summary, per_repeat = tables["summary"], tables[PER_REPEAT_TABLE]
    metrics = metric_columns(summary)
    assert {"ttft_s_p50", "ttft_s_p99", "e2e_s_mean", "throughput_tok_s", "slo_attainment"} <= set(metrics)
    assert (summary["repeats"] == REPEATS).all() and "repeat" not in summary
    for _, row in summary.iterrows():
        rows = per_repeat[(per_repeat["engine"] == row["engine"]) & (per_repeat["priority_class"] == row["priority_class"])]
        assert len(rows) == REPEATS
        for metric in metrics:
            values = rows[metric].dropna().to_numpy(float)
            if len(values) == 0:  # a gauge the simulator does not report, say
                assert np.isnan(row[metric])
                continue
            assert row[metric] == pytest.approx(values.mean())
            low, high = row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]
            if len(values) > 1 and values.std() > 0:
                expected = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
                assert (low, high) == pytest.approx(expected)
                assert low < row[metric] < high
    ttft = summary["ttft_s_p50_ci95_high"] - summary["ttft_s_p50_ci95_low"]
    assert (ttft > 0).all()  # different arrivals, different TTFTs: the interval is real


def test_an_interval_needs_two_values_and_skips_missing_ones():
    mean, low, high = mean_interval(pd.Series([1.0, np.nan, 3.0, 2.0]))
    assert mean == 2.0 and (low, high) == pytest.approx(stats.t.interval(0.95, 2, loc=2.0, scale=stats.sem([1, 2, 3])))
    assert mean_interval(pd.Series([4.0, np.nan]))[0] == 4.0 and np.isnan(mean_interval(pd.Series([4.0]))[1])


def test_the_comparison_table_prints_mean_plus_minus_half_the_interval(repeated):
    tables, _ = repeated
    summary = tables["summary"]
    line = next(l for l in comparison_table(summary).splitlines() if l.startswith("qllm"))  # qllm's LS row
    cells = re.findall(r"([\d.]+) ± ([\d.]+)", line)
    assert len(cells) == 7  # every column but n
    row = summary[(summary["engine"] == "qllm") & (summary["priority_class"] == "LS")].iloc[0]
    shown_mean, shown_half = map(float, cells[0])  # TTFT p50, in the table's time unit
    half = (row["ttft_s_p50_ci95_high"] - row["ttft_s_p50_ci95_low"]) / 2
    assert shown_half / shown_mean == pytest.approx(half / row["ttft_s_p50"], rel=0.02)
    one_run = summary[[c for c in summary.columns if "_ci95_" not in c]]
    assert "±" not in comparison_table(one_run)


def test_gathered_repeats_are_drawn_as_bands_around_each_mean(tmp_path):
    from harness.app import compose_config, run_benchmark
    from tests.helpers import APP_SHRINK

    for rate in (10, 40):
        cfg = compose_config(*APP_SHRINK, *SIM, f"trace.rate={rate}", "repeats=2")
        run_benchmark(cfg, tmp_path / f"rate={rate}", model_name="tiny_mixtral")
    gathered = gather.report(tmp_path)  # the sweep's table and every figure, as a sweep ends
    assert (tmp_path / "figures" / "ttft_vs_rate.png").is_file() and (tmp_path / "figures" / "timeline.png").is_file()
    for rate, run in gathered.groupby("rate"):
        requests = read_run(tmp_path / run["run_dir"].iloc[0])["requests"]
        per_repeat = [gather.offered_rps(r.drop(columns="repeat")) for _, r in requests.groupby("repeat")]
        assert run["offered_rps"].iloc[0] == pytest.approx(np.mean(per_repeat))
    bands = figures.plotted_bands(figures.ttft_vs_x_figure(gathered, "rate"))
    for engine in ("qllm", "fcfs_rtc"):
        rows = gathered[(gathered["engine"] == engine) & (gathered["priority_class"] == "LS")].sort_values("rate")
        x, low, high = bands[figures.CLASS_LABELS["LS"], figures.ENGINE_LABELS[engine]]
        np.testing.assert_allclose(x, rows["rate"].to_numpy(float))
        np.testing.assert_allclose(low, rows["ttft_s_mean_ci95_low"].to_numpy(float))
        np.testing.assert_allclose(high, rows["ttft_s_mean_ci95_high"].to_numpy(float))


def test_one_repeat_writes_the_tables_as_before(run_app):
    tables = run_app(*SIM)
    assert PER_REPEAT_TABLE not in tables and "repeat" not in tables["requests"]
    assert not [c for c in tables["summary"].columns if "ci95" in c or c == "repeats"]
    assert not figures.plotted_bands(figures.ttft_vs_x_figure(tables["summary"], "rate"))


def test_a_repeat_count_below_one_is_refused(run_app):
    with pytest.raises(ConfigurationError, match="repeats=0"):
        run_app(*SIM, "repeats=0")
