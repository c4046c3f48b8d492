"""harness.results.run_dir (run directory files) and harness.results.comparison (the printed comparison)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.results import run_dir as results
from harness.results.atomic import atomic_write
from harness.results.metrics import itl_s, requests_table, summary_table
from harness.results.comparison import comparison_table
from tests.helpers import REQUESTS, SLO, recorded_run


def sample_tables() -> dict[str, pd.DataFrame]:
    requests = pd.DataFrame({"request_id": ["a", "b"], "ttft_s": [0.5, float("nan")], "token_ids": [[1, 2], []]})
    timeline = pd.DataFrame({"t_start_s": [0.0], "request_ids": [["a", "b"]], "layer": pd.array([None], "Int64")})
    return {"requests": requests, "timeline": timeline}


def test_write_tables_round_trip_and_leaves_no_temp_files(tmp_path):
    results.write_tables(tmp_path, sample_tables())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["requests.csv", "requests.parquet", "timeline.csv", "timeline.parquet"]
    back = results.read_run(tmp_path)
    assert back["requests"]["token_ids"].tolist() == [[1, 2], []]
    assert back["timeline"]["request_ids"].tolist() == [["a", "b"]]
    without_lists = sample_tables()["requests"].drop(columns="token_ids")
    pd.testing.assert_frame_equal(back["requests"].drop(columns="token_ids"), without_lists)
    csv = pd.read_csv(tmp_path / "requests.csv")
    assert csv["token_ids"].map(json.loads).tolist() == [[1, 2], []]
    assert json.loads(pd.read_csv(tmp_path / "timeline.csv")["request_ids"][0]) == ["a", "b"]


def test_write_tables_real_requests_table(tmp_path):
    df = requests_table(REQUESTS, recorded_run(), SLO, "r1", "qllm", with_token_ids=True)
    results.write_tables(tmp_path, {"requests": df})
    back = results.read_run(tmp_path)["requests"]
    pd.testing.assert_frame_equal(back, df, check_dtype=False)


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_manifest_and_completion_marker(tmp_path):
    manifest = results.write_manifest(tmp_path, {"run_id": "r1"})
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    for key in ("start_utc", "command", "git_commit", "git_dirty", "python", "packages", "cpu", "gpu",
                "torch_num_threads", "hostname", "run_id"):  # fmt: skip
        assert key in on_disk
    for package in ("torch", "transformers", "pandas", "hydra-core"):
        assert on_disk["packages"][package]
    assert not results.is_complete(tmp_path)
    results.mark_complete(tmp_path)
    assert results.is_complete(tmp_path)
    results.write_manifest(tmp_path)  # the same directory run again starts incomplete
    assert not results.is_complete(tmp_path)


def test_write_config_resolves_interpolations(tmp_path):
    cfg = OmegaConf.create({"rate": 2, "trace": {"name": "t_${rate}"}})
    results.write_config(tmp_path, cfg)
    assert OmegaConf.load(tmp_path / "config.yaml") == {"rate": 2, "trace": {"name": "t_2"}}


def engine_summary(engine: str, time_scale: float) -> pd.DataFrame:
    """The hand-made run's summary as if `engine` ran it with every time scaled."""
    rec = recorded_run()
    df = requests_table(REQUESTS, rec, SLO, "r1", engine)
    times = [c for c in df.columns if c.endswith("_s") and c != "slo_ttft_s"]
    df[times] = df[times] * time_scale
    itl = {rid: [g * time_scale for g in gaps] for rid, gaps in itl_s(rec).items()}
    return summary_table(df, itl, {"engine": engine, "rate": 2.0})


def test_comparison_table_names_engines_classes_and_ratio():
    summary = pd.concat([engine_summary("qllm", 1.0), engine_summary("fcfs_rtc", 4.0)], ignore_index=True)
    text = comparison_table(summary)
    for word in ("qllm", "fcfs_rtc", "LS", "BE", "all", "TTFT p50 (s)", "SLO met %", "tok/s"):
        assert word in text
    assert "fcfs_rtc LS TTFT p50 = 4.0x qllm" in text
    assert max(len(line) for line in text.splitlines()) <= 120


def test_comparison_table_per_swept_parameter_and_missing_reference():
    fast = engine_summary("qllm", 1.0).assign(rate=1.0)
    summary = pd.concat([engine_summary("qllm", 1.0), fast, engine_summary("fcfs_rtc", 2.0)], ignore_index=True)
    text = comparison_table(summary)
    assert "rate" in text.splitlines()[0] and "fcfs_rtc rate=2.0 LS TTFT p50 = 2.0x qllm" in text
    assert "no LS TTFT ratio" in comparison_table(engine_summary("fcfs_rtc", 1.0))
