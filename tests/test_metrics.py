"""harness.results.metrics on a hand-made run whose every metric is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.results.metrics import (
    REQUESTS_COLUMNS,
    UNFINISHED_ERROR,
    itl_s,
    requests_table,
    summary_table,
    suspended_s,
    timeline_table,
)
from harness.recorder import Recorder, RequestEvents
from tests.helpers import REQUESTS, SLO, StepClock, recorded_run, request

@pytest.fixture
def table():
    return requests_table(REQUESTS, recorded_run(), SLO, run_id="r1", engine="qllm").set_index("request_id")


def test_requests_table_columns_and_order():
    df = requests_table(REQUESTS, recorded_run(), SLO, run_id="r1", engine="qllm")
    assert list(df.columns) == REQUESTS_COLUMNS
    assert df["request_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert (df["run_id"] == "r1").all() and (df["engine"] == "qllm").all()


def test_finished_request_metrics(table):
    a = table.loc["a"]
    assert (a.arrival_s, a.first_scheduled_s, a.first_token_s, a.finish_s) == (0.0, 0.5, 1.0, 2.5)
    assert a.ttft_s == 1.0 and a.e2e_s == 2.5 and a.tpot_s == 0.75
    assert a.generated_len == 3 and a.preemptions == 1
    assert a.suspended_s == pytest.approx(0.2)
    assert a.status == "finished" and bool(a.slo_met) and a.slo_ttft_s == 3.0
    assert isinstance(a.error, float) and math.isnan(a.error)
    b = table.loc["b"]
    assert (b.ttft_s, b.e2e_s, b.tpot_s) == (3.5, 4.0, 0.5)
    assert not b.slo_met  # TTFT 3.5 > 3.0
    c = table.loc["c"]
    assert c.ttft_s == pytest.approx(0.2) and c.e2e_s == 4.0 and c.tpot_s == pytest.approx(3.8)
    assert c.suspended_s == pytest.approx(1.5) and bool(c.slo_met)  # TPOT 3.8 <= 4.0
    assert math.isnan(c.slo_ttft_s)


def test_rejected_and_unfinished_are_kept_with_a_reason(table):
    d = table.loc["d"]
    assert d.status == "rejected" and d.error == "prompt longer than the context"
    assert not d.slo_met and d.generated_len == 0
    assert np.isnan([d.ttft_s, d.tpot_s, d.e2e_s]).all()
    e = table.loc["e"]
    assert e.status == "unfinished" and e.error == UNFINISHED_ERROR and not e.slo_met
    assert e.first_token_s == 3.4 and math.isnan(e.finish_s) and math.isnan(e.ttft_s)


def test_tpot_is_nan_for_a_single_token_and_token_ids_column():
    clock = StepClock()
    rec = Recorder(clock)
    clock.t = 2.0
    rec.tokens({"x": 7})
    rec.finished("x")
    df = requests_table([request("x", "LS", 0.0, 1)], rec, {"LS": {"tpot_s": 0.1, "e2e_s": 1.5}}, "r", "e", True)
    row = df.iloc[0]
    assert row.ttft_s == 2.0 and math.isnan(row.tpot_s) and row.token_ids == [7]
    assert not row.slo_met  # e2e 2.0 > 1.5; the TPOT SLO has nothing to judge


def test_suspended_counts_an_unresumed_preemption_until_finish():
    assert suspended_s(RequestEvents(preempted_s=[1.0, 3.0], resumed_s=[2.0], finish_s=4.0)) == 2.0
    assert math.isnan(suspended_s(RequestEvents(preempted_s=[1.0])))  # never finished
    assert suspended_s(RequestEvents()) == 0.0


def test_itl_gaps():
    itl = itl_s(recorded_run())
    assert itl["a"] == [0.5, 1.0] and itl["b"] == [0.5] and itl["d"] == []
    assert itl["c"] == [pytest.approx(3.8)]


def test_summary_table_known_values():
    rec = recorded_run()
    df = requests_table(REQUESTS, rec, SLO, run_id="r1", engine="qllm")
    s = summary_table(df, itl_s(rec), {"engine": "qllm", "rate": 2.0}).set_index("priority_class")
    assert list(s.index) == ["LS", "BE", "all"]
    assert list(summary_table(df, itl_s(rec), {"engine": "qllm"}).columns[:2]) == ["engine", "priority_class"]
    ls, be, every = s.loc["LS"], s.loc["BE"], s.loc["all"]
    assert (ls.n, ls.n_finished, ls.n_rejected, ls.n_unfinished) == (3, 2, 0, 1)
    assert (be.n, be.n_finished, be.n_rejected) == (2, 1, 1)
    # numpy linear percentiles of LS TTFT [1.0, 3.5]
    assert ls.ttft_s_mean == 2.25 and ls.ttft_s_p50 == 2.25
    assert ls.ttft_s_p90 == pytest.approx(3.25) and ls.ttft_s_p99 == pytest.approx(3.475)
    assert ls.tpot_s_mean == 0.625 and ls.tpot_s_p90 == pytest.approx(0.725)
    # LS ITL pooled over finished a, b: [0.5, 1.0, 0.5]; unfinished e is left out
    assert ls.itl_s_mean == pytest.approx(2 / 3) and ls.itl_s_p50 == 0.5 and ls.itl_s_p90 == pytest.approx(0.9)
    assert ls.e2e_s_p50 == 3.25 and be.e2e_s_p99 == 4.0
    assert ls.slo_attainment == pytest.approx(1 / 3) and be.slo_attainment == 0.5
    assert every.slo_attainment == pytest.approx(2 / 5)
    # makespan: last finish 5.0 - first arrival 0.0, the same on every row
    assert (s["makespan_s"] == 5.0).all()
    assert (ls.goodput_rps, be.goodput_rps, every.goodput_rps) == (0.2, 0.2, 0.4)
    assert (ls.throughput_tok_s, be.throughput_tok_s, every.throughput_tok_s) == (1.0, 0.4, 1.4)
    assert (ls.throughput_rps, every.throughput_rps) == (0.4, pytest.approx(0.6))
    assert (s["engine"] == "qllm").all() and (s["rate"] == 2.0).all()
    from_recorder = summary_table(df, rec, {"engine": "qllm", "rate": 2.0}).set_index("priority_class")
    pd.testing.assert_frame_equal(from_recorder, s)


def test_slo_attainment_counts_only_requests_that_have_an_slo():
    rec = recorded_run()
    ls_only = {"LS": {"ttft_s": 3.0}, "BE": {"ttft_s": None, "tpot_s": None}}
    df = requests_table(REQUESTS, rec, ls_only, run_id="r1", engine="qllm")
    assert df["has_slo"].tolist() == [True, True, False, False, True]
    s = summary_table(df, itl_s(rec), {"engine": "qllm"}).set_index("priority_class")
    assert np.isnan(s.loc["BE", "slo_attainment"])  # BE has no SLO: nothing to attain
    assert s.loc["all", "slo_attainment"] == s.loc["LS", "slo_attainment"] == pytest.approx(1 / 3)
    assert s.loc["BE", "goodput_rps"] == 0.2  # c finished and misses no SLO of its class; d was rejected


def test_summary_of_a_class_without_finished_requests_is_nan():
    rec = recorded_run()
    df = requests_table(REQUESTS[3:4], rec, SLO, run_id="r1", engine="qllm")  # only rejected d
    s = summary_table(df, itl_s(rec), {}).set_index("priority_class")
    assert math.isnan(s.loc["BE", "ttft_s_p50"]) and math.isnan(s.loc["all", "makespan_s"])


def test_timeline_table():
    rec = recorded_run()
    classes = {r.request_id: r.priority_class for r in REQUESTS}
    t = timeline_table(rec, "r1", "qllm", classes)
    assert t["duration_s"].tolist() == [0.5, 1.0]
    assert t["request_ids"].tolist() == [["a", "c"], ["b"]]
    assert t["batch_size"].tolist() == [2, 1] and t["num_tokens"].tolist() == [2, 4]
    assert (t.loc[0, "num_ls"], t.loc[0, "num_be"], t.loc[1, "num_ls"]) == (1, 1, 1)
    assert t.loc[0, "layer"] == 3 and t.loc[0, "expert"] == 1 and t["is_resume"].tolist() == [True, False]
    assert t["layer"].isna().tolist() == [False, True]
    assert timeline_table(rec, "r1", "qllm")["num_ls"].isna().all()
    assert timeline_table(Recorder(StepClock()), "r1", "qllm").empty
