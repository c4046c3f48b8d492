"""The fidelity suite: workloads drawn from a seed cover what the issue asks and repeat with the seed,
and a small run of benchmarks/sim_fidelity.py measures real and simulated runs and writes its table;
benchmarks/machine_drift.py times the same passes window after window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks import sim_fidelity
from harness.profiling.profile_app import profile_in_process
from harness.traces.random_workloads import (ENGINES, SHARED_DATA, Limits, available_sources, draw_trace, draw_workloads,
                                      requests_for, with_rate)  # fmt: skip
from qllm.sim.profiled import read_profile, write_profile


TINY_PROFILE = ("shapes.num_shapes=8", "shapes.max_batch_size=4", "shapes.max_prompt_len=24", "shapes.max_context_len=32",
                "engine_run.num_requests=40", "idle_run.repeats=1", "after_prompts_run.repeats=1", "in_run_run.batch_sizes=[4]",
                "in_run_run.num_requests=6", "in_run_run.max_output_len=6")  # fmt: skip


def test_workloads_repeat_with_their_seed_and_differ_across_seeds():
    assert draw_workloads(5, 12) == draw_workloads(5, 12)
    assert draw_workloads(5, 12) != draw_workloads(6, 12)
    trace = draw_trace(with_rate(draw_workloads(5, 1)[0], 3.0), 40, 3.0, Limits())
    again = draw_trace(with_rate(draw_workloads(5, 1)[0], 3.0), 40, 3.0, Limits())
    pd.testing.assert_frame_equal(trace, again)


def test_drawn_workloads_span_the_choices():
    workloads = draw_workloads(0, 400)
    assert {w.engine for w in workloads} == set(ENGINES)
    assert {w.batch_limit for w in workloads} == {8, 16, 32}
    assert {w.granularity for w in workloads if w.engine == "qllm"} == {"layer", "expert"}
    assert all(w.granularity is None for w in workloads if w.engine != "qllm")
    loads, ls = np.array([w.load for w in workloads]), np.array([w.ls_fraction for w in workloads])
    assert 0.3 <= loads.min() < 0.4 and 1.8 < loads.max() <= 2.0 and 0.1 <= ls.min() and ls.max() <= 0.5
    cvs = [w.cv for w in workloads if w.arrival == "gamma"]
    assert cvs and 2.0 <= min(cvs) and max(cvs) <= 4.0
    expected_arrivals = {"poisson", "gamma", *available_sources()}
    assert {w.arrival for w in workloads} == expected_arrivals
    assert {w.lengths for w in workloads} == {"sharegpt", "uniform", *available_sources()}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not here: only the shipped lengths")
@pytest.mark.parametrize("source", ["azure_code", "azure_conv", "burstgpt", "mooncake"])
def test_real_timestamps_keep_their_pattern_at_the_chosen_rate(source):
    workload = next(w for w in draw_workloads(1, 400) if w.arrival == source)
    limits = Limits(max_prompt_len=512, max_output_len=256)
    trace = draw_trace(workload, 100, 4.0, limits)
    arrivals = trace["arrival_s"].to_numpy()
    assert arrivals[0] == 0.0 and (np.diff(arrivals) >= 0).all()
    assert arrivals[-1] == pytest.approx(99 / 4.0)  # 4 req/s on average
    assert trace["prompt_len"].max() <= 512 and trace["output_len"].max() <= 256 and trace["prompt_len"].min() >= 1
    assert (trace["priority_class"] == "LS").sum() == round(100 * workload.ls_fraction)


def test_gamma_arrivals_are_bursty_and_requests_scale_with_the_rate():
    workload = next(w for w in draw_workloads(2, 100) if w.arrival == "gamma")
    gaps = np.diff(draw_trace(workload, 2000, 10.0, Limits())["arrival_s"])
    assert gaps.std() / gaps.mean() == pytest.approx(workload.cv, rel=0.25)
    limits = Limits(duration_s=10, min_requests=16, max_requests=160)
    assert [requests_for(rate, limits) for rate in (0.5, 5, 50)] == [16, 50, 160]


def test_a_small_fidelity_run_measures_both_executors_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "fidelity.csv"
    table = sim_fidelity.main([
        "--seed", "3", "--workloads", "2", "--models", "tiny_mixtral", "--engines", "qllm", "fcfs_rtc",
        "--duration", "0.5", "--max-prompt-len", "24", "--max-output-len", "6", "--max-requests", "10",
        "--profile-override", "shapes.num_shapes=8", "--profile-override", "shapes.max_batch_size=4",
        "--profile-override", "shapes.max_prompt_len=24", "--profile-override", "shapes.max_context_len=32",
        "--profile-override", "engine_run.num_requests=40", "--profile-override", "after_prompts_run.repeats=1",
        "--profile-override", "in_run_run.num_requests=6", "--profile-override", "in_run_run.max_output_len=6",
        "--profile-override", "in_run_run.batch_sizes=[4]", "--real-runs", "3", "--compare", "hardware.in_run_level=true",
        "--compare", "hardware.wake_up_delay=false", "hardware.after_prompts_delay=false",
        "--compare-profile", "in_run_run.batch_sizes=[]", "--out", str(out),
    ])  # fmt: skip
    written = pd.read_csv(out)
    assert len(written) == len(table) > 0 and set(written["workload"]) == {0, 1} and (written["seed"] == 3).all()
    assert set(written["metric"]) <= set(sim_fidelity.METRICS.values()) and "throughput" in set(written["metric"])
    assert np.isfinite(written[["real_1", "real_2", "real_3", "sim", "error", "real_spread", "floor"]]).all().all()
    assert (written["sim"] > 0).all() and (written["real_1"] > 0).all()
    reals = written[["real_1", "real_2", "real_3"]]
    np.testing.assert_allclose(written["real_mean"], reals.mean(axis=1))
    np.testing.assert_allclose(written["error"], written["sim"] / written["real_mean"] - 1)
    # --compare: the same real runs against more simulated runs, one per variant: here at the level of the
    # profile's engine runs, then the stages as timed without the delays (two overrides; a machine may
    # measure no delay, so the second tells itself from the first by the level)
    # and a profile measured alongside the first (stages timed in other seconds, without engine runs)
    for i in (1, 2, 3):
        np.testing.assert_allclose(written[f"error_compared_{i}"], written[f"sim_compared_{i}"] / written["real_mean"] - 1)
    latencies = written[written["metric"] != "throughput"]
    assert (latencies["sim_compared_1"] != latencies["sim"]).any()
    assert (latencies["sim_compared_2"] != latencies["sim_compared_1"]).any()  # each variant its own overrides
    assert (latencies["sim_compared_3"] != latencies["sim"]).any()
    np.testing.assert_allclose(written["floor"], 0.6745 * reals.std(axis=1) / written["real_mean"] / np.sqrt(3))
    # Student's t with 2 degrees of freedom: 2.920 standard errors of the three runs' mean either side
    np.testing.assert_allclose(written["interval_90"], 2.920 * reals.std(axis=1) / written["real_mean"] / np.sqrt(3),
                               rtol=1e-3)  # fmt: skip
    printed = capsys.readouterr().out
    steps = [line.split(":")[0].split()[0] + " " + line.split(": real run ")[1].split()[0] if ": real run " in line
             else "profile " + line.split("part ")[1].split()[0]
             for line in printed.splitlines() if ": real run " in line or line.startswith("profiled")]  # fmt: skip
    # Sweeps: a workload's runs minutes apart; the profile in parts before each sweep and after the last, each
    # part of the profile compared right after the first's.
    assert steps == ["profile 1", "profile 1", "#0 1", "#1 1", "profile 2", "profile 2", "#0 2", "#1 2", "profile 3",
                     "profile 3", "#0 3", "#1 3", "profile 4", "profile 4"]  # fmt: skip
    alongside = [line for line in printed.splitlines() if line.startswith("profiled tiny_mixtral (in_run_run.batch_sizes=[])")]
    assert len(alongside) == 4 and "a profile measured alongside with in_run_run.batch_sizes=[]" in printed
    assert "seed 3" in printed and "|error| median %" in printed and "signed median %" in printed
    assert "simulated with hardware.in_run_level=true\n" in printed
    assert "simulated with hardware.wake_up_delay=false hardware.after_prompts_delay=false" in printed
    assert "floor median %" in printed and "floor p90 %" in printed and "outside 90 % interval %" in printed
    assert "signed median % per model" in printed and "signed median % per lengths" in printed
    drawn = {w.index: w.lengths for w in draw_workloads(3, 2, ["tiny_mixtral"], ["qllm", "fcfs_rtc"])}
    assert (written["lengths"] == written["workload"].map(drawn)).all()
    assert "the same real runs simulated with hardware.in_run_level=true" in printed
    assert "tiny_mixtral's level (qllm.sim.level): iteration prompts " in printed
    assert "tiny_mixtral (in_run_run.batch_sizes=[])'s level" not in printed  # no runs, no level to print


def test_the_floors_median_and_p90_are_what_an_exact_simulator_would_show():
    """Each row's floor is the median |error| an exact simulator shows on it against its noisy runs'
    mean. Over many alike rows such a simulator's median is that floor and its p90 the half-normal's
    (1.645 / 0.6745 of it); over rows half of them noiseless, its p90 is the noisy half's p80, above
    every row's own floor."""
    alike = pd.Series([0.1] * 400)
    assert sim_fidelity.exact_quantile(alike, 0.5) == pytest.approx(0.1, rel=0.05)
    assert sim_fidelity.exact_quantile(alike, 0.9) == pytest.approx(0.1 * 1.6449 / 0.6745, rel=0.05)
    half = pd.Series([0.0, 0.2] * 200)
    assert sim_fidelity.exact_quantile(half, 0.9) == pytest.approx(0.2 * 1.2816 / 0.6745, rel=0.05)
    assert sim_fidelity.exact_quantile(half, 0.9) == sim_fidelity.exact_quantile(half, 0.9)  # seeded
    rows = pd.DataFrame({"metric": ["TPOT mean"] * 400, "error": 0.0, "real_spread": 0.0, "floor": alike,
                         "interval_90": 0.1})  # fmt: skip
    stats = sim_fidelity.per_metric(rows)
    assert stats.loc["all metrics", "floor p90 %"] == pytest.approx(100 * 0.1 * 1.6449 / 0.6745, rel=0.05)
    assert stats.loc["TPOT mean", "floor median %"] == pytest.approx(10.0, rel=0.05)


def test_an_exact_simulator_falls_outside_the_runs_interval_on_a_tenth_of_rows():
    """Three runs drawn around a true value, the simulator predicting that value exactly: the share of
    rows outside the runs' 90 % interval is 10 %, with Student's t (a normal interval from three
    runs' sigma would put about 25 % outside). A simulator one sigma off is outside far more often."""
    rng = np.random.default_rng(0)
    workload = draw_workloads(0, 1, ["tiny_mixtral"], ["qllm"])[0]

    def summary(value: float) -> pd.DataFrame:  # every metric at `value`, the true one 1.0
        return pd.DataFrame([{"priority_class": "all", **dict.fromkeys(sim_fidelity.METRICS, value)}])

    def outside(simulated: float) -> float:
        rows = pd.concat([sim_fidelity.compare(workload, [summary(1 + 0.1 * rng.standard_normal()) for _ in range(3)],
                                               summary(simulated)) for _ in range(400)])  # fmt: skip
        return sim_fidelity.per_metric(rows).loc["all metrics", "outside 90 % interval %"]

    assert outside(1.0) == pytest.approx(10, abs=2)
    assert outside(1.1) > 20


def test_the_per_model_signed_median_shows_a_profiles_level():
    """Each model's signed median per metric over its workloads' `all` rows: a model whose every
    workload is over (its profile measured in a slow minute) stands apart from one that is under."""
    rows = [{"workload": w, "model": model, "class": cls, "metric": metric, "error": error + 0.01 * w}
            for model, error in (("slow_profile", 0.10), ("fast_profile", -0.05))
            for w in range(3) for cls in ("LS", "all") for metric in ("TPOT mean", "throughput")]  # fmt: skip
    table = pd.DataFrame(rows)
    table.loc[table["class"] == "LS", "error"] = 0.5  # a class's own rows do not enter
    got = sim_fidelity.signed_medians(table, "model")
    assert got.loc["slow_profile", "TPOT mean"] == pytest.approx(11.0) and got.loc["fast_profile", "throughput"] == pytest.approx(-4.0)


def test_a_given_profile_is_used_as_it_is(tmp_path, capsys):
    profile = tmp_path / "tiny.parquet"
    profile_in_process("tiny_mixtral", profile, list(TINY_PROFILE))
    capsys.readouterr()
    table = sim_fidelity.main(["--seed", "3", "--workloads", "1", "--models", "tiny_mixtral", "--engines", "fcfs_rtc",
                               "--duration", "0.5", "--max-prompt-len", "24", "--max-output-len", "6", "--max-requests", "10",
                               "--profile", "tiny_mixtral", str(profile)])  # fmt: skip
    printed = capsys.readouterr().out
    assert len(table) > 0 and "profiled" not in printed and "real run 3 of 3" in printed  # the default runs


def test_wake_up_prices_lone_requests_with_and_without_the_idle_delay(tmp_path, capsys):
    from benchmarks import wake_up

    profile = tmp_path / "tiny.parquet"
    profile_in_process("tiny_mixtral", profile, list(TINY_PROFILE))
    samples, model, about = read_profile(profile)
    idle = samples["stage"] == "idle"
    write_profile(samples.assign(seconds=samples["seconds"].where(~idle, 0.05)), profile, model, about)  # 50 ms to wake
    table = wake_up.main(["--profile", str(profile), "--engines", "fcfs_cb", "--gaps", "0.2", "--requests", "3"])
    row = table.iloc[0]
    assert row["sim_ms"] == pytest.approx(row["sim_without_delay_ms"] + 50, abs=0.5)  # each request arrives at an idle engine
    real_ms = (row["real_1_ms"] + row["real_2_ms"]) / 2
    assert row["error_%"] == pytest.approx(100 * (row["sim_ms"] / real_ms - 1)) and 0 < real_ms < 1000
    assert "sim_without_delay_ms" in capsys.readouterr().out


def test_pass_fidelity_times_held_out_shapes_at_every_granularity(tmp_path, capsys):
    from benchmarks import pass_fidelity

    profile = tmp_path / "tiny.parquet"
    profile_in_process("tiny_mixtral", profile, list(TINY_PROFILE))
    out = tmp_path / "passes.csv"
    table = pass_fidelity.main(["--profile", str(profile), "--seed", "4", "--shapes", "5", "--repeats", "1", "--out", str(out)])
    written = pd.read_csv(out)
    assert len(written) == len(table) == 5 * 3 and set(written["granularity"]) == set(pass_fidelity.GRANULARITIES)
    assert (written["measured_s"] > 0).all() and (written["predicted_s"] > 0).all()
    np.testing.assert_allclose(written["error"], written["predicted_s"] / written["measured_s"] - 1)
    # Checkpoints cost time: a pass that stops after every expert is predicted dearer than one that never stops.
    by_granularity = written.groupby("granularity")["predicted_s"].sum()
    assert by_granularity["expert"] > by_granularity["iteration"]
    assert "|error| median %" in capsys.readouterr().out


def test_machine_drift_times_the_same_passes_window_after_window(tmp_path, capsys):
    from benchmarks import machine_drift

    out = tmp_path / "drift.csv"
    windows = machine_drift.main(["--minutes", "0.02", "--window", "0.3", "--out", str(out)])
    written = pd.read_csv(out)
    assert len(written) == len(windows) >= 3 and (written["passes"] >= 1).all()
    assert (written[["decode ms", "prefill ms"]] > 0).all().all() and written["start_s"].is_monotonic_increasing
    stats = machine_drift.summary(written)
    decode = written["decode ms"]
    assert stats.loc["decode", "range %"] == pytest.approx(100 * (decode.max() - decode.min()) / decode.median())
    assert "median |deviation| %" in capsys.readouterr().out
