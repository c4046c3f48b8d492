"""benchmarks/gpu_check.py, as far as a CPU can check it: its arguments, the one line without CUDA,
the table it writes, and the simulator's side of its pass table (which needs no GPU)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pandas as pd
import pytest

from harness.traces.workload import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_without_cuda_it_exits_at_once_with_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert done.returncode == 1 and done.stdout.strip() == gpu_check.NO_CUDA, (done.stdout, done.stderr[-2000:])


def test_arguments_default_to_the_issue_and_bad_ones_are_refused(capsys):
    args = gpu_check.parse_args([])
    assert (args.requests, args.oracle, len(args.rates)) == (64, 8, 2)
    for bad in (["--rates", "1"], ["--oracle", "9", "--requests", "8"], ["--rates", "0", "2"]):
        with pytest.raises(SystemExit) as stop:
            gpu_check.parse_args(bad)
        assert stop.value.code == 2, bad


def test_the_table_is_written_and_printed(tmp_path):
    rows = [{"kind": "decode", "batch": 8, "measured_ms": 12.3456}, {"kind": "prefill", "batch": 16, "measured_ms": 80.0}]
    printed = gpu_check.write_table(rows, tmp_path / "deep" / "t.csv")
    assert pd.read_csv(tmp_path / "deep" / "t.csv").to_dict("records") == rows
    assert "12.346" in printed and "prefill" in printed and str(tmp_path / "deep" / "t.csv") in printed


def test_the_simulators_side_of_the_pass_table_runs_without_a_gpu():
    assert gpu_check.hardware_available()[:2] == ["h100_80gb", "a100_80gb"]
    decode = gpu_check.simulated_seconds("h100_80gb", "expert", ("decode", 8, 200), repeats=1)
    prefill = gpu_check.simulated_seconds("h100_80gb", "expert", ("prefill", 16, 200), repeats=1)
    slower = gpu_check.simulated_seconds("a100_80gb", "expert", ("decode", 8, 200), repeats=1)
    assert 0 < decode < prefill and decode < slower  # an A100 reads its weights slower than an H100


def test_oracle_lines_say_where_tokens_differ():
    assert gpu_check.oracle_line("r1", [1, 2, 3], [1, 2, 3]) == "r1: 3 tokens equal generate's"
    assert gpu_check.oracle_line("r2", [1, 5, 3], [1, 2, 3]) == "r2: differs from generate at token 1 of 3"
