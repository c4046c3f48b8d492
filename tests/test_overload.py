"""Memory budget, admission control and overload: every request accounted for, memory bounded."""

from __future__ import annotations

from harness.metrics import requests_table, summary_table, timeline_table
from qllm.kv import kv_bytes_per_token
from tests.helpers import assert_matches_oracle, engine_config, replay_on_steps, requests_of


def run_with_budget(config, resources, specs, budget_tokens: int):
    model = resources.model
    budget = budget_tokens * kv_bytes_per_token(model.config, model.dtype)
    cfg = engine_config(config, "qllm", memory_budget_mb=budget / 2**20, policy__max_batch_size=8)
    requests = requests_of(specs)
    return replay_on_steps(resources, cfg, requests), requests, budget


def test_a_request_that_can_never_fit_is_rejected_and_the_rest_wait_their_turn(config, resources):
    specs = [(30, 20, "BE", 0), (10, 5, "BE", 0), (10, 5, "BE", 0), (8, 4, "LS", 1)]
    recorder, requests, _ = run_with_budget(config, resources, specs, budget_tokens=32)
    assert "can never fit the memory budget" in recorder.requests["r0"].rejected_reason
    # r1 and r2 reserve 15 tokens each; the LS request's 12 more must wait for one to finish.
    assert recorder.requests["r3"].first_scheduled_s >= recorder.requests["r1"].finish_s
    assert_matches_oracle(resources.model, recorder, requests[1:])


def test_overload_runs_to_the_end_with_memory_bounded_and_every_request_accounted_for(config, resources):
    # 60 requests in 6 steps: far more than a budget of 80 KV tokens can serve at once.
    specs = [(4 + i % 9, 2 + i % 5, "LS" if i % 5 == 0 else "BE", i // 10) for i in range(60)]
    specs.append((70, 30, "BE", 0))  # can never fit
    recorder, requests, budget = run_with_budget(config, resources, specs, budget_tokens=80)
    statuses = ["rejected" if recorder.requests[r.request_id].rejected_reason else "finished" for r in requests]
    assert statuses.count("finished") == 60 and statuses.count("rejected") == 1
    assert all(len(recorder.requests[r.request_id].token_ids) == r.output_len for r in requests[:60])
    timeline = timeline_table(recorder, "run", "qllm")
    assert (timeline["kv_reserved_bytes"] + timeline["suspended_bytes"]).max() <= budget
    assert timeline["num_queued"].max() >= 40  # the queue really built up, and was reported
    assert timeline["num_queued"].iloc[-1] == 0


def test_summary_reports_peak_memory_and_the_longest_wait(config, resources):
    specs = [(8, 6, "BE", 0), (8, 6, "BE", 0), (4, 3, "LS", 1)]
    recorder, requests, budget = run_with_budget(config, resources, specs, budget_tokens=64)
    df = requests_table(requests, recorder, {"LS": {"ttft_s": 3.0}}, "run", "qllm")
    summary = summary_table(df, recorder, {"engine": "qllm"}).set_index("priority_class")
    assert 0 < summary.loc["all", "peak_kv_reserved_bytes"] <= budget
    assert summary.loc["all", "peak_suspended_bytes"] > 0  # the BE prefill was preempted mid-pass
    assert summary.loc["BE", "max_wait_s"] >= 1
