"""QLLMEngine under every policy: token-exact against `generate`, even when preempted mid-pass."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.metrics import timeline_table
from harness.recorder import Recorder
from tests.engine_helpers import StepClock, build_engine, drive, ls_waits, make_request, oracle_tokens, tiny_model

CONF = Path(__file__).resolve().parents[1] / "conf" / "engine"
POLICIES = ["qllm", "qllm_prototype", "fcfs_rtc", "fcfs_cb", "priority_cb"]


def engine_config(name: str, **policy_overrides) -> dict:
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())[name]
    cfg["policy"].update(policy_overrides)
    return cfg


requests_strategy = st.lists(
    st.tuples(
        st.integers(1, 10),  # prompt_len
        st.integers(1, 6),  # output_len
        st.sampled_from(["LS", "BE"]),
        st.integers(0, 12),  # arrival step
    ),
    min_size=1,
    max_size=7,
)


def run(name: str, specs, granularity: str | None = None, **policy_overrides):
    cfg = engine_config(name, **policy_overrides)
    if granularity is not None:
        cfg["granularity"] = granularity
    model = tiny_model()
    recorder = Recorder(StepClock())
    engine = build_engine(cfg, model, recorder, name)
    requests = [make_request(i, p, o, c, float(a)) for i, (p, o, c, a) in enumerate(specs)]
    drive(engine, recorder, requests)
    return model, recorder, requests


@pytest.mark.parametrize("name", POLICIES)
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(specs=requests_strategy)
def test_tokens_match_generate_and_every_request_finishes_once(name, specs):
    model, recorder, requests = run(name, specs, granularity="layer", max_batch_size=3)
    for request in requests:
        events = recorder.requests[request.request_id]
        assert events.finish_s is not None and events.rejected_reason is None
        assert len(events.token_ids) == request.output_len
        assert events.token_ids == oracle_tokens(model, request), request
    assert recorder.num_done == len(requests)


def test_qllm_preempts_be_mid_pass_and_resumes_without_recomputing():
    # Two long BE prompts run; an LS request arrives while their prefill is between layers.
    specs = [(10, 4, "BE", 0), (9, 4, "BE", 0), (5, 3, "LS", 1)]
    model, recorder, requests = run("qllm", specs)
    be = recorder.requests["r0"]
    assert len(be.preempted_s) >= 1 and len(be.resumed_s) == len(be.preempted_s)
    resumed = [q for q in recorder.quanta if q.is_resume]
    assert resumed and all(q.request_ids == ("r0", "r1") for q in resumed)
    # The LS request started right at the next checkpoint: before the BE prefill finished.
    be_prefill_end = max(q.t_end_s for q in recorder.quanta if q.kind == "prefill" and "r0" in q.request_ids)
    assert recorder.requests["r2"].first_scheduled_s < be_prefill_end
    # Each layer of the preempted BE prefill ran exactly once: nothing was recomputed.
    layers = [q.layer for q in recorder.quanta if q.kind == "prefill" and "r0" in q.request_ids]
    assert sorted(l for l in layers if l is not None) == list(range(model.config.num_hidden_layers))
    for request in requests:
        assert recorder.requests[request.request_id].token_ids == oracle_tokens(model, request)


def test_fcfs_rtc_starts_no_prompt_until_its_batch_completes():
    specs = [(6, 5, "BE", 0), (4, 2, "LS", 1)]
    _, recorder, _ = run("fcfs_rtc", specs)
    assert recorder.requests["r1"].first_scheduled_s >= recorder.requests["r0"].finish_s


def test_priority_cb_preempts_least_urgent_running_sequence_for_an_ls_prompt():
    specs = [(4, 8, "BE", 0), (4, 8, "BE", 0), (3, 2, "LS", 2)]
    model, recorder, requests = run("priority_cb", specs, max_batch_size=2)
    assert len(recorder.requests["r1"].preempted_s) == 1
    assert recorder.requests["r2"].first_scheduled_s < recorder.requests["r1"].finish_s
    for request in requests:
        assert recorder.requests[request.request_id].token_ids == oracle_tokens(model, request)


def test_requests_longer_than_the_context_are_rejected_with_a_reason():
    specs = [(200, 100, "LS", 0), (4, 2, "BE", 0)]
    _, recorder, _ = run("qllm", specs)
    assert "exceed the model's context of 256" in recorder.requests["r0"].rejected_reason
    assert recorder.requests["r1"].finish_s is not None


def test_an_ls_prefill_waits_for_at_most_one_decoder_layer_of_be_work():
    # BE prompts and decodes keep the engine busy; LS requests land in the middle of BE quanta.
    specs = [(20 + i, 10, "BE", 0) for i in range(3)] + [(6, 2, "LS", t + 0.5) for t in (3, 11, 25, 40, 57)]
    model, recorder, requests = run("qllm", specs)
    classes = {r.request_id: r.priority_class for r in requests}
    timeline = timeline_table(recorder, "run", "qllm", classes)
    waits = ls_waits(timeline, requests, recorder)
    assert sum(len(w) == 1 for w in waits.values()) >= 3, "most LS requests should arrive while BE work runs"
    last_layer = model.config.num_hidden_layers - 1
    for quanta in waits.values():
        assert len(quanta) <= 1, waits
        for q in quanta:  # one decoder layer, or the norm + LM head right after a pass's last layer
            previous = timeline.loc[q.Index - 1]
            assert not pd.isna(q.layer) or (previous["layer"] == last_layer and previous["request_ids"] == q.request_ids)
