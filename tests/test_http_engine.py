"""The `openai_http` engine: built from its config without a model, the body it sends in each
priority convention, and every way a request can break (HTTP error, refused connection after
retries, timeout, closing early) ends as a `failed` row with its reason, against a real server."""

from __future__ import annotations

import pytest

from harness.app import compose_config
from qllm.clock import RealClock
from harness.engines import RunResources
from harness.results.metrics import requests_table, summary_table
from harness.recorder import Recorder
from harness.replay import replay
from harness.server_process import free_port
from qllm.prompts import prompt_token_ids
from qllm.request import Request
from tests.helpers import SERVED_MODEL, aborted, generated, is_drained, server_metrics, wait_for

LS_REQUEST = Request("ls", 0.0, prompt_len=3, output_len=4, priority_class="LS", priority=0)
BE_REQUEST = Request("be", 0.0, prompt_len=3, output_len=4, priority_class="BE", priority=1, prompt_ids=(1, 2, 3))


def http_engine(base_url: str, *overrides: str, clock=None):
    """The openai_http engine of the composed config, as qllm-bench builds it; returns (engine, recorder, resources)."""
    cfg = compose_config("engine=[openai_http]", f"engine.openai_http.base_url={base_url}",
                         f"engine.openai_http.model={SERVED_MODEL}", *overrides)  # fmt: skip
    clock = clock or RealClock()
    recorder, resources = Recorder(clock), RunResources(cfg)
    return resources.build_engine(cfg.engine.openai_http, "openai_http", clock, recorder), recorder, resources


def test_the_config_builds_an_engine_that_loads_no_model():
    engine, _, resources = http_engine("http://127.0.0.1:9/v1")
    assert engine.idle() and engine.name == "openai_http" and engine.model == SERVED_MODEL
    assert "model" not in vars(resources) and "executor" not in vars(resources)  # never loaded
    engine.close()


@pytest.mark.parametrize("convention, ls, be", [("vllm", 0, 1), ("sglang", 0, -100), ("none", None, None)])
def test_the_body_has_token_ids_exact_lengths_and_the_servers_priority(convention, ls, be):
    engine, _, _ = http_engine("http://127.0.0.1:9/v1", f"engine.openai_http.priority_convention={convention}",
                               "+engine.openai_http.extra_body.top_k=1")  # fmt: skip
    ls_body, be_body = engine.body(LS_REQUEST), engine.body(BE_REQUEST)
    assert ls_body.get("priority") == ls and be_body.get("priority") == be
    assert ls_body["prompt"] == prompt_token_ids(LS_REQUEST, 32000) and be_body["prompt"] == [1, 2, 3]
    assert be_body["max_tokens"] == be_body["min_tokens"] == 4 and be_body["ignore_eos"] and be_body["stream"]
    assert be_body["return_token_ids"] and be_body["top_k"] == 1 and be_body["model"] == SERVED_MODEL
    engine.close()


def replay_rows(engine, recorder, requests):
    replay(requests, engine, recorder, progress=False)
    rows = requests_table(requests, recorder, {}, "run", engine.name).set_index("request_id")
    return rows, summary_table(rows.reset_index(), recorder, {}).set_index("priority_class")


def test_http_errors_become_failed_rows_with_the_servers_message(qllm_server):
    too_long = Request("too-long", 0.0, prompt_len=1020, output_len=10, priority_class="BE", priority=1)
    engine, recorder, _ = http_engine(qllm_server.base_url)
    rows, summary = replay_rows(engine, recorder, [LS_REQUEST, too_long])
    assert rows.loc["ls", "status"] == "finished" and rows.loc["ls", "generated_len"] == 4
    assert rows.loc["too-long", "status"] == "failed"
    assert rows.loc["too-long", "error"].startswith("HTTP 400: this request cannot be served: prompt (1020) + output (10)")
    assert summary.loc["all", "n_failed"] == 1 and summary.loc["all", "n_finished"] == 1


def test_a_refused_connection_is_retried_then_fails():
    engine, recorder, _ = http_engine(f"http://127.0.0.1:{free_port()}/v1", "engine.openai_http.max_retries=2",
                                      "engine.openai_http.retry_backoff_s=0.01")  # fmt: skip
    rows, _ = replay_rows(engine, recorder, [LS_REQUEST])
    assert rows.loc["ls", "status"] == "failed"
    assert rows.loc["ls", "error"].startswith("ConnectError") and rows.loc["ls", "error"].endswith("(after 2 retries)")


def test_a_request_past_its_timeout_fails_and_the_server_frees_it(qllm_server):
    long = Request("long", 0.0, prompt_len=8, output_len=1000, priority_class="BE", priority=1)
    start = server_metrics(qllm_server.url)
    engine, recorder, _ = http_engine(qllm_server.base_url, "engine.openai_http.timeout_s=0.3")
    rows, _ = replay_rows(engine, recorder, [long])
    assert rows.loc["long", "status"] == "failed" and rows.loc["long", "error"].startswith("timed out after 0.3 s (")
    assert 0 < rows.loc["long", "generated_len"] < 1000, "the reply must outlast the timeout"
    assert_the_server_stopped_it(qllm_server, start)


def assert_the_server_stopped_it(server, start: dict) -> None:
    """The server aborted one request, freed its KV and keeps serving, and its engine stopped the
    request before the 1,000 tokens asked."""
    wait_for(lambda: aborted(metrics := server_metrics(server.url)) == aborted(start) + 1 and is_drained(metrics))
    assert generated(server_metrics(server.url)) - generated(start) < 1000


def test_closing_the_engine_fails_what_still_streams(qllm_server):
    clock = RealClock()
    start = server_metrics(qllm_server.url)
    engine, recorder, _ = http_engine(qllm_server.base_url, clock=clock)
    engine.submit(Request("long", 0.0, prompt_len=8, output_len=1000, priority_class="BE", priority=1))
    wait_for(lambda: "long" in recorder.requests)  # streaming (`in`: the loop thread alone adds entries)
    engine.close()
    assert engine.idle() and recorder.requests["long"].failed_reason.startswith("cancelled")
    assert len(recorder.requests["long"].token_ids) < 1000
    assert_the_server_stopped_it(qllm_server, start)


def test_a_concurrency_limit_sends_one_request_after_the_other(qllm_server):
    engine, recorder, _ = http_engine(qllm_server.base_url, "engine.openai_http.max_concurrency=1")
    rows, _ = replay_rows(engine, recorder, [LS_REQUEST, BE_REQUEST])  # both arrive at 0
    assert (rows["status"] == "finished").all()
    assert rows.loc["be", "first_token_s"] >= rows.loc["ls", "finish_s"]
