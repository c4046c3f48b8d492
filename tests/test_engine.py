"""QLLMEngine under every policy: token-exact against `generate`, even when preempted mid-pass."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from harness.app import CONF_DIR, compose_config
from harness.results.metrics import timeline_table
from tests.helpers import (
    ENGINES, SHRINK, assert_matches_oracle, engine_config, ls_waits, replay_on_steps, replay_timed, requests_of,
)

QLLM_ENGINES = [name for name in ENGINES if name != "hf_generate"]

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


def run(config, resources, name: str, specs, **overrides):
    requests = requests_of(specs)
    return replay_on_steps(resources, engine_config(config, name, **overrides), requests, name), requests


@pytest.mark.parametrize("name", QLLM_ENGINES)
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=requests_strategy)
def test_tokens_match_generate_and_every_request_finishes_once(config, resources, tiny_model, name, specs):
    recorder, requests = run(config, resources, name, specs, policy__max_batch_size=3)  # as shipped, granularity included
    for request in requests:
        assert len(recorder.requests[request.request_id].token_ids) == request.output_len
    assert_matches_oracle(tiny_model, recorder, requests)
    assert recorder.num_done == len(requests)


def test_qllm_preempts_be_mid_pass_and_resumes_without_recomputing(config, resources, tiny_model):
    # Two long BE prompts run; an LS request arrives while their prefill is between layers.
    specs = [(10, 4, "BE", 0), (9, 4, "BE", 0), (5, 3, "LS", 1)]
    recorder, requests = run(config, resources, "qllm", specs)
    be = recorder.requests["r0"]
    assert len(be.preempted_s) >= 1 and len(be.resumed_s) == len(be.preempted_s)
    resumed = [q for q in recorder.quanta if q.is_resume]
    assert resumed and all(q.request_ids == ("r0", "r1") for q in resumed)
    # The LS request started right at the next checkpoint: before the BE prefill finished.
    be_prefill_end = max(q.t_end_s for q in recorder.quanta if q.kind == "prefill" and "r0" in q.request_ids)
    assert recorder.requests["r2"].first_scheduled_s < be_prefill_end
    # Each layer of the preempted BE prefill ran exactly once: nothing was recomputed.
    layers = [q.layer for q in recorder.quanta if q.kind == "prefill" and "r0" in q.request_ids]
    assert sorted(l for l in layers if l is not None) == list(range(tiny_model.config.num_hidden_layers))
    assert_matches_oracle(tiny_model, recorder, requests)


def test_fcfs_rtc_starts_no_prompt_until_its_batch_completes(config, resources):
    recorder, _ = run(config, resources, "fcfs_rtc", [(6, 5, "BE", 0), (4, 2, "LS", 1)])
    assert recorder.requests["r1"].first_scheduled_s >= recorder.requests["r0"].finish_s


def test_priority_cb_preempts_least_urgent_running_sequence_for_an_ls_prompt(config, resources, tiny_model):
    specs = [(4, 8, "BE", 0), (4, 8, "BE", 0), (3, 2, "LS", 2)]
    recorder, requests = run(config, resources, "priority_cb", specs, policy__max_batch_size=2)
    assert len(recorder.requests["r1"].preempted_s) == 1
    assert recorder.requests["r2"].first_scheduled_s < recorder.requests["r1"].finish_s
    assert_matches_oracle(tiny_model, recorder, requests)


@pytest.mark.parametrize("top_up", [False, True])
def test_be_prompts_top_up_an_ls_prefill_only_into_room_under_the_batch_limit(config, resources, tiny_model, top_up):
    # Two BE requests decode (2 of B=4 active); an LS prompt and two BE prompts arrive together.
    specs = [(4, 12, "BE", 0), (5, 12, "BE", 0), (6, 2, "LS", 3), (3, 3, "BE", 3), (4, 3, "BE", 3)]
    recorder, requests = run(config, resources, "qllm", specs, policy__max_batch_size=4,
                             policy__be_prefill_top_up=top_up)  # fmt: skip
    ls_prefill = {q.request_ids for q in recorder.quanta if q.kind == "prefill" and "r2" in q.request_ids}
    # The LS prompt and its batch become 3 active sequences with r0 and r1: room for one BE prompt more.
    assert ls_prefill == ({("r2", "r3")} if top_up else {("r2",)})
    assert recorder.requests["r4"].first_scheduled_s > recorder.requests["r2"].first_scheduled_s
    assert_matches_oracle(tiny_model, recorder, requests)


def test_requests_longer_than_the_context_are_rejected_with_a_reason(config, resources):
    recorder, _ = run(config, resources, "qllm", [(200, 100, "LS", 0), (4, 2, "BE", 0)])
    assert "exceed the model's context of 256" in recorder.requests["r0"].rejected_reason
    assert recorder.requests["r1"].finish_s is not None


def test_an_ls_prefill_waits_for_at_most_one_decoder_layer_of_be_work(config, resources, tiny_model):
    # BE prompts and decodes keep the engine busy; LS requests land in the middle of BE quanta.
    specs = [(20 + i, 10, "BE", 0) for i in range(3)] + [(6, 2, "LS", t + 0.5) for t in (3, 11, 25, 40, 57)]
    recorder, requests = run(config, resources, "qllm", specs)
    classes = {r.request_id: r.priority_class for r in requests}
    timeline = timeline_table(recorder, "run", "qllm", classes)
    waits = ls_waits(timeline, requests, recorder)
    assert sum(len(w) == 1 for w in waits.values()) >= 3, "most LS requests should arrive while BE work runs"
    last_layer = tiny_model.config.num_hidden_layers - 1
    for quanta in waits.values():
        assert len(quanta) <= 1, waits
        for q in quanta:  # one decoder layer, or the norm + LM head right after a pass's last layer
            previous = timeline.loc[q.Index - 1]
            assert not pd.isna(q.layer) or (previous["layer"] == last_layer and previous["request_ids"] == q.request_ids)


POLICIES = sorted(path.stem for path in (CONF_DIR / "policy").glob("*.yaml"))
CHECKPOINTS = sorted(path.stem for path in (CONF_DIR / "checkpoint").glob("*.yaml"))


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_and_checkpoint_pair_runs_a_preempting_trace_to_the_end_or_is_refused(
    resources, tiny_model, policy, checkpoint
):
    cfg = compose_config(*SHRINK, "engine=[qllm]", f"policy@engine.qllm.policy={policy}",
                         f"checkpoint@engine.qllm.checkpoint_policy={checkpoint}", "slo=cpu_scaled",
                         "engine.qllm.policy.max_batch_size=2")  # fmt: skip
    # BE prompts start first; LS prompts land mid-pass, in prefill and in decode of the BE work.
    specs = [(10, 6, "BE", 0), (9, 6, "BE", 0), (8, 6, "BE", 0), (5, 3, "LS", 1.5), (4, 3, "LS", 8.5), (6, 2, "LS", 9)]
    requests = requests_of(specs)
    try:
        recorder = replay_on_steps(resources, cfg.engine.qllm, requests)
    except InstantiationException as refused:  # refused when built, naming both
        for node in (cfg.engine.qllm.policy, cfg.engine.qllm.checkpoint_policy):
            assert type(instantiate(node)).__name__ in str(refused)
        return
    assert_matches_oracle(tiny_model, recorder, requests)  # every request finished, token-exact
    if checkpoint == "strict_priority":  # a preempting pair really preempted mid-pass, and resumed
        assert any(q.is_resume for q in recorder.quanta)


# A trace that gives every preempting engine its chance: two long BE prompts fill a batch of 2; LS
# prompts land mid-pass (in BE prefill and in BE decode), one more BE request joins later.
PREEMPTING_TRACE = [(10, 4, "BE", 0), (9, 4, "BE", 0), (5, 3, "LS", 1.5), (8, 5, "BE", 4), (4, 3, "LS", 9.5),
                    (6, 2, "LS", 20.5)]  # fmt: skip
# engine -> (where its passes may stop, takes mid-pass preemptions, takes between-iteration preemptions):
# on PREEMPTING_TRACE each engine takes exactly the kinds it says, and none of the other.
SHIPPED = {
    "qllm": ("layer", True, False), "qllm_expert": ("expert", True, False), "qllm_iteration": ("iteration", False, False),
    "qllm_aging": ("layer", True, False), "qllm_prototype": ("layer", True, False),
    "qllm_slo_slack": ("layer", True, False), "qllm_one_phase": ("layer", True, False),
    "priority_cb": ("iteration", False, True), "fcfs_rtc": ("iteration", False, False),
    "fcfs_cb": ("iteration", False, False),
}  # fmt: skip
# An LS TTFT SLO of 1 time unit (a quantum takes one): the slack policy's LS prompts are at risk.
OVERRIDES = {"qllm_slo_slack": {"checkpoint_policy__ttft_slo_s": 1.0}}


def test_every_engine_config_is_listed():
    assert set(SHIPPED) == set(QLLM_ENGINES)


def checkpoints_seen(recorder) -> str:
    """Where the recorded passes stopped: inside layers (expert), at layer ends, or only at pass ends."""
    if any(q.expert is not None for q in recorder.quanta):
        return "expert"
    return "layer" if any(q.layer is not None for q in recorder.quanta) else "iteration"


@pytest.mark.parametrize("name", QLLM_ENGINES)
def test_each_engine_preempts_as_its_policy_says_and_stays_token_exact(config, resources, tiny_model, name):
    cfg = engine_config(config, name, policy__max_batch_size=2, **OVERRIDES.get(name, {}))
    requests = requests_of(PREEMPTING_TRACE)
    recorder = replay_timed(resources, cfg, requests)
    assert_matches_oracle(tiny_model, recorder, requests)
    mid_pass = sum(q.is_resume for q in recorder.quanta)  # each mid-pass preemption is resumed once
    preempted = sum(len(events.preempted_s) for events in recorder.requests.values())
    resumed = sum(len(events.resumed_s) for events in recorder.requests.values())
    between_iterations = preempted - sum(len(q.request_ids) for q in recorder.quanta if q.is_resume)
    granularity, takes_mid_pass, takes_between = SHIPPED[name]
    assert checkpoints_seen(recorder) == granularity
    assert (mid_pass > 0, between_iterations > 0) == (takes_mid_pass, takes_between), (mid_pass, between_iterations)
    assert preempted == resumed  # every preempted sequence ran again
