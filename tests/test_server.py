"""`qllm-serve` as clients see it, over real HTTP to a real server process (conftest `qllm_server`):
a trace replayed through `openai_http` gets the in-process engine's tokens, the stream follows
OpenAI's chunk format, a client that goes away frees its KV, bad requests get a 400 that says
what is wrong, and /metrics parses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import SERVE_CONTEXT, SERVED_MODEL, aborted, generated, is_drained, server_metrics, wait_for

COMPLETIONS = "/v1/completions"


def complete(server, body: dict, path: str = COMPLETIONS) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json={"model": SERVED_MODEL, **body}, timeout=60.0)


def sse_events(server, body: dict, path: str = COMPLETIONS) -> list[str]:
    """The data of every event of a streamed request, in order."""
    with httpx.stream("POST", f"{server.url}{path}", json={"model": SERVED_MODEL, "stream": True, **body},
                      timeout=60.0) as response:  # fmt: skip
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines[:3]
    return [line[len("data: ") :] for line in lines]


def test_a_trace_replayed_over_http_gets_the_in_process_tokens(run_app, qllm_server):
    tables = run_app(
        "engine=[qllm,openai_http]", f"engine.openai_http.base_url={qllm_server.base_url}", SERVE_CONTEXT,
        "trace.num_requests=16", "trace.max_prompt_len=48", "trace.max_output_len=12", "record_token_ids=true",
    )  # fmt: skip
    requests = tables["requests"]
    local, remote = (requests[requests["engine"] == e].set_index("request_id") for e in ("qllm", "openai_http"))
    assert len(remote) == 16 and (remote["status"] == "finished").all(), remote["error"].tolist()
    assert (remote["generated_len"] == remote["output_len"]).all()
    for request_id, row in remote.iterrows():
        assert list(row["token_ids"]) == list(local.loc[request_id, "token_ids"]), request_id
    assert (remote["ttft_s"] > 0).all() and (remote["e2e_s"] >= remote["ttft_s"]).all()
    assert tables["timeline"]["engine"].eq("qllm").all()  # the client sees no quanta
    summary = tables["summary"].set_index(["engine", "priority_class"])
    assert summary.loc[("openai_http", "all"), "n_finished"] == 16 and summary.loc[("openai_http", "LS"), "n"] > 0


def test_a_stream_is_openai_chunks_then_usage_then_done(qllm_server):
    body = {"prompt": [1, 415, 2936, 9060], "max_tokens": 5, "return_token_ids": True, "priority": 0,
            "stream_options": {"include_usage": True}}  # fmt: skip
    events = sse_events(qllm_server, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    tokens, usage = chunks[:-1], chunks[-1]
    assert len(tokens) == 5 and len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    for chunk in tokens:
        assert chunk["object"] == "text_completion" and chunk["model"] == SERVED_MODEL
        (choice,) = chunk["choices"]
        assert choice["index"] == 0 and isinstance(choice["text"], str) and len(choice["token_ids"]) == 1
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 4 + ["length"]
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    whole = complete(qllm_server, {**body, "stream_options": None}).json()  # the same tokens in one body
    assert whole["choices"][0]["token_ids"] == [c["choices"][0]["token_ids"][0] for c in tokens]
    assert whole["choices"][0]["text"] == "".join(c["choices"][0]["text"] for c in tokens)


def test_chat_streams_deltas_from_the_models_chat_template(qllm_server):
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}
    chunks = [json.loads(data) for data in sse_events(qllm_server, body, "/v1/chat/completions")[:-1]]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 3
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[-1]["choices"][0]["finish_reason"] == "length"
    reply = httpx.post(f"{qllm_server.url}/v1/chat/completions", json={"model": SERVED_MODEL, **body}).json()
    assert reply["usage"]["prompt_tokens"] == 9  # <s> [INST] Hello [/INST] in Mixtral's template


def test_clients_that_disconnect_abort_their_requests_and_free_their_kv(qllm_server):
    start = server_metrics(qllm_server.url)
    before = aborted(start)
    body = {"model": SERVED_MODEL, "prompt": [1, 2, 3, 4, 5, 6, 7, 8], "max_tokens": 1000, "stream": True}
    with httpx.Client(timeout=60.0) as client:
        streams = [client.stream("POST", f"{qllm_server.url}{COMPLETIONS}", json={**body, "priority": i % 2})
                   for i in range(4)]  # fmt: skip
        lines = [stream.__enter__().iter_lines() for stream in streams]  # kept: a dropped iterator closes its stream
        for stream_lines in lines:  # every request is generating: its first token arrived
            assert next(line for line in stream_lines if line).startswith("data: ")
        busy = server_metrics(qllm_server.url)
        assert not is_drained(busy) and busy[("qllm:kv_cache_allocated_bytes", ())] > 0
        for stream in streams:
            stream.__exit__(None, None, None)  # close the connection mid-stream
    # A non-streaming client that gives up is a disconnect too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{qllm_server.url}{COMPLETIONS}", json={**body, "stream": False}, timeout=httpx.Timeout(60.0, read=0.3))
    wait_for(lambda: aborted(metrics := server_metrics(qllm_server.url)) == before + 5 and is_drained(metrics))
    # The engine stopped each request: drained (KV freed) before it generated what was asked.
    assert generated(server_metrics(qllm_server.url)) - generated(start) < 5 * 1000
    assert complete(qllm_server, {"prompt": [1, 2], "max_tokens": 2}).status_code == 200


BAD_REQUESTS = {
    "unknown model": ({"model": "gpt-4", "prompt": [1, 2]}, "model 'gpt-4' is not served here"),
    "empty prompt": ({"prompt": ""}, "prompt is empty"),
    "empty token ids": ({"prompt": []}, "prompt is empty"),
    "ids outside the vocabulary": ({"prompt": [1, 32000]}, "outside the model's vocabulary [0, 32000)"),
    "prompt longer than the context": ({"prompt": [1] * 1100, "max_tokens": 1}, "exceed the model's context of 1024"),
    "negative max_tokens": ({"prompt": [1, 2], "max_tokens": -3}, "max_tokens: Input should be greater than or equal to 1"),
    "malformed JSON": ('{"model": "tiny_mixtral", "prompt": [1, 2', "not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_each_bad_request_gets_a_400_that_says_what_is_wrong_and_the_server_keeps_serving(qllm_server, case):
    body, message = BAD_REQUESTS[case]
    url = f"{qllm_server.url}{COMPLETIONS}"
    if isinstance(body, str):
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(url, json={"model": SERVED_MODEL, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["code"] == 400 and error["type"] == "BadRequestError"
    assert complete(qllm_server, {"prompt": [1, 2], "max_tokens": 1}).status_code == 200


def test_metrics_parse_with_per_class_latencies_and_engine_gauges(qllm_server):
    before = server_metrics(qllm_server.url)
    for priority in (0, 5):  # LS (priority <= ls_max_priority = 0), then BE
        assert complete(qllm_server, {"prompt": [1, 2, 3], "max_tokens": 2, "priority": priority}).status_code == 200
    after = server_metrics(qllm_server.url)
    for priority_class in ("LS", "BE"):
        for histogram in ("qllm:time_to_first_token_seconds", "qllm:e2e_request_latency_seconds"):
            key = (f"{histogram}_count", (("priority_class", priority_class),))
            assert after[key] == before.get(key, 0) + 1, key
        assert ("qllm:preemptions_total", (("priority_class", priority_class),)) in after
    assert ("qllm:num_requests_waiting", (("priority_class", "LS"),)) in after and is_drained(after)
    assert httpx.get(f"{qllm_server.url}/health").status_code == 200
    assert httpx.get(f"{qllm_server.base_url}/models").json()["data"][0]["id"] == SERVED_MODEL


QLLM_SERVE = Path(sys.executable).parent / "qllm-serve"  # the console script pip installed beside this python


@pytest.mark.parametrize("mistake, words", [
    ("engine=[qllm,fcfs_cb]", ["serves one engine; got 2 (qllm, fcfs_cb)", "engine=qllm"]),
    ("model=no_such_model", ["model", "no_such_model"]),
])  # fmt: skip
def test_qllm_serve_refuses_what_it_cannot_serve_in_one_line(mistake, words):
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    done = subprocess.run([str(QLLM_SERVE), mistake, "port=9"], capture_output=True, text=True, timeout=120, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("qllm-serve: error: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]
