"""Bad input never crashes a run; interrupted runs say so; the same seed gives the same run."""

from __future__ import annotations

import math
import os
import signal

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.recorder import Recorder
from harness.results.run_dir import is_complete
from harness.traces.trace_schema import TraceError, load_trace, save_trace
from tests.helpers import ENGINES, engine_config, replay_on_steps, requests_of

GOOD = {
    "request_id": ["a", "b", "c"],
    "arrival_s": [0.0, 0.5, 1.0],
    "prompt_len": [4, 5, 6],
    "output_len": [2, 3, 4],
    "priority_class": ["LS", "BE", "BE"],
}
BAD_VALUES = {
    "arrival_s": [-1.0, math.nan, math.inf, "soon", None],
    "prompt_len": [0, -3, 2.5, math.nan, "many", None],
    "output_len": [0, -1, 1.5, math.inf, "x", None],
    "priority_class": ["urgent", "", None, 3],
    "request_id": [None],
}


@st.composite
def corrupted_traces(draw):
    """A valid trace with one cell, one column or the row order broken."""
    frame = pd.DataFrame(GOOD).astype(object)
    kind = draw(st.sampled_from(["cell", "drop_column", "unsorted", "duplicate_id"]))
    if kind == "cell":
        column = draw(st.sampled_from(sorted(BAD_VALUES)))
        row = draw(st.integers(0, len(frame) - 1))
        frame.at[row, column] = draw(st.sampled_from(BAD_VALUES[column]))
    elif kind == "drop_column":
        frame = frame.drop(columns=draw(st.sampled_from(list(GOOD))))
    elif kind == "unsorted":
        frame["arrival_s"] = [1.0, 0.5, 0.0]
    else:
        frame.at[2, "request_id"] = "a"
    extra = draw(st.booleans())
    if extra:
        frame["note"] = "extra columns are kept"
    return kind, frame


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=corrupted_traces(), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_every_malformed_trace_gives_a_clear_error_naming_file_and_field(tmp_path, case, suffix):
    kind, frame = case
    path = tmp_path / f"trace{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    with pytest.raises(TraceError) as error:
        load_trace(path)
    message = str(error.value)
    assert str(path) in message
    assert "column" in message or "request_id" in message, message
    if kind in ("cell", "unsorted", "duplicate_id") and "missing" not in message:
        assert "row" in message, message


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "empty"), (b"\xff\xfe\x00garbage\x81", "cannot be read"), (b"request_id,arrival_s\n", "missing")],
)
def test_empty_unreadable_and_headless_files_are_named_errors(tmp_path, content, expected):
    path = tmp_path / "trace.csv"
    path.write_bytes(content)
    with pytest.raises(TraceError, match=expected):
        load_trace(path)


ALL_ENGINES = f"engine=[{','.join(ENGINES)}]"


def test_a_prompt_longer_than_the_context_is_rejected_per_request_not_fatal(run_app, tmp_path):
    trace = pd.DataFrame({**GOOD, "prompt_len": [4, 100_000, 6]})
    path = tmp_path / "long.csv"
    trace.to_csv(path, index=False)
    requests = run_app(ALL_ENGINES, f"trace.path={path}", "trace.max_output_len=2", run_dir=tmp_path / "run")["requests"]
    assert len(requests) == 3 * len(ENGINES)  # every engine, every request
    long = requests[requests["request_id"] == "b"]
    assert (long["status"] == "rejected").all()
    assert long["error"].str.contains("exceed the model's context of 256").all()
    assert (requests[requests["request_id"] != "b"]["status"] == "finished").all()


def test_prompt_ids_outside_the_vocabulary_are_rejected_per_request_by_every_engine(run_app, tmp_path):
    trace = pd.DataFrame({**GOOD, "prompt_ids": [[1, 2, 3, 4], [5, 6, 40_000, 7, 8], [1, 2, 3, 4, 5, 6]]})
    path = save_trace(trace, tmp_path / "ids.parquet")
    requests = run_app(ALL_ENGINES, f"trace.path={path}", "trace.max_output_len=2", run_dir=tmp_path / "run")["requests"]
    bad = requests[requests["request_id"] == "b"]
    assert len(bad) == len(ENGINES) and (bad["status"] == "rejected").all()
    assert bad["error"].str.contains("outside the model's vocabulary").all()
    assert (requests[requests["request_id"] != "b"]["status"] == "finished").all()


def test_sigterm_writes_what_was_recorded_and_marks_the_run_incomplete(run_app, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record_finish = Recorder.finished

    def finished_then_terminated(recorder, request_id):  # SIGTERM as the first request ends: mid-run, whatever the speed
        record_finish(recorder, request_id)
        if recorder.num_done == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Recorder, "finished", finished_then_terminated)
    with pytest.raises(SystemExit, match="interrupted by SIGTERM"):
        run_app("engine=[hf_generate]", "trace.num_requests=40", "trace.time_scale=20", "warmup_tokens=0", run_dir=run_dir)
    assert not is_complete(run_dir) and (run_dir / "INCOMPLETE").exists()
    requests = pd.read_parquet(run_dir / "requests.parquet")
    assert len(requests) == 40  # every request accounted for
    assert (requests["status"] == "unfinished").any() and (requests["status"] == "finished").any()


@pytest.mark.parametrize("name", ["qllm", "priority_cb"])
def test_the_same_trace_gives_identical_tokens_and_schedules(config, resources, name):
    specs = [(3 + i % 7, 1 + i % 4, "LS" if i % 3 == 0 else "BE", i // 2) for i in range(12)]
    first, second = (replay_on_steps(resources, engine_config(config, name), requests_of(specs), name) for _ in range(2))
    assert {r: e.token_ids for r, e in first.requests.items()} == {r: e.token_ids for r, e in second.requests.items()}
    schedule = lambda rec: [(q.kind, q.request_ids, q.layer, q.is_resume) for q in rec.quanta]  # noqa: E731
    assert schedule(first) == schedule(second)
