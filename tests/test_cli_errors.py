"""A user's mistake at the command line ends in one line on stderr that says what is wrong, exit
status 2, no traceback (HYDRA_FULL_ERROR=1 shows one), through the real console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.traces.workload import PROJECT_ROOT

QLLM_BENCH = Path(sys.executable).parent / "qllm-bench"  # the console script pip installed beside this python
QUICK = ("engine=[qllm]", "trace.num_requests=2", "warmup_tokens=0", "progress=false")


def qllm_bench(*args: str, tmp_path: Path, full_error: bool = False) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run([str(QLLM_BENCH), *QUICK, *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip


def bad_trace(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    pd.DataFrame({"request_id": ["a", "b"], "arrival_s": [0.0, 0.5], "prompt_len": [4, -3], "output_len": [2, 2],
                  "priority_class": ["LS", "BE"]}).to_csv(path, index=False)  # fmt: skip
    return path


MISTAKES = {  # what the user typed -> words the one line must hold
    "malformed trace": (lambda tmp: f"trace.path={bad_trace(tmp)}", ["trace.csv", "row", "prompt_len"]),
    "unreadable trace": (lambda tmp: f"trace.path={tmp / 'missing.csv'}", ["missing.csv", "no such trace file"]),
    "unknown option": (lambda tmp: "trace.rat=5", ["trace.rat"]),
    "unknown engine": (lambda tmp: "engine=[nope]", ["engine", "nope"]),
    "unsupported model": (lambda tmp: "model.model_type=llama", ["'llama': no decoder layer's MLP block holds routed `experts`"]),
    "unknown model type": (lambda tmp: "model.model_type=not_a_model", ["model.model_type", "not_a_model"]),
    "negative rate": (lambda tmp: "trace.rate=-3", ["trace.rate", "-3"]),
    "budget below one block": (lambda tmp: "engine.qllm.memory_budget_mb=-1", ["memory_budget_mb=-1", "one KV block"]),
    "attention transformers refuses": (lambda tmp: "model.attn_implementation=flash_attention_2",
                                       ["transformers refused", "model.attn_implementation", "flash_attention_2"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_is_one_line_on_stderr_and_exit_status_2(tmp_path, mistake):
    make_override, words = MISTAKES[mistake]
    done = qllm_bench(make_override(tmp_path), tmp_path=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("qllm-bench: error: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert "Traceback" not in done.stderr


def test_hydra_full_error_still_shows_the_traceback(tmp_path):
    done = qllm_bench(f"trace.path={bad_trace(tmp_path)}", tmp_path=tmp_path, full_error=True)
    assert done.returncode != 0 and "Traceback" in done.stderr and "TraceError" in done.stderr


def test_a_run_where_nothing_is_served_prints_no_callback_warning_and_says_why(tmp_path):
    # A server that is not there: every request fails, nothing finishes, no quantum is recorded.
    done = qllm_bench("engine=[openai_http]", "engine.openai_http.base_url=http://127.0.0.1:9/v1",
                      "engine.openai_http.model=absent", tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Callback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    header = next(line for line in done.stdout.splitlines() if line.strip().startswith("engine"))
    assert "rejected" in header and "failed" in header
    assert "openai_http: 2 rejected or failed; the first: failed: ConnectError" in done.stdout
    assert not (tmp_path / "run" / "figures" / "timeline.png").exists()


HELP = {  # console script -> words its own help page must hold
    "qllm-bench": ["replay a request trace", "== Configuration groups", "engine:", "results/runs/"],
    "qllm-serve": ["OpenAI-compatible HTTP API", "== Configuration groups", "/metrics"],
    "qllm-profile": ["stage by stage", "== Configuration groups", "profiles/<model>.parquet"],
    "qllm-report": ["Gather every complete run", "sweep_summary"],
}


@pytest.mark.parametrize("command", HELP)
def test_each_command_opens_its_help_with_what_it_does_and_the_commands_people_run(command):
    done = subprocess.run([str(QLLM_BENCH.parent / command), "--help"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{command}: ") or done.stdout.startswith(f"usage: {command}"), done.stdout[:200]
    assert "The five commands people run most:" in done.stdout
    assert all(word in done.stdout for word in HELP[command]), done.stdout
    assert "powered by Hydra" not in done.stdout and "_target_" not in done.stdout  # no stock page, no config dump
