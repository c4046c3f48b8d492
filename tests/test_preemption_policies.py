"""Checkpoint policies (strict priority, SLO slack, user-defined) and BE aging."""

from __future__ import annotations

from types import SimpleNamespace

from harness.results.metrics import max_wait_s
from qllm.kv import BlockPool, SequenceKV
from qllm.preemption import CheckpointState, NeverPreempt, SLOSlack, StrictPriority
from qllm.sequence import Sequence
from tests.helpers import (
    assert_matches_oracle, engine_config, make_request, replay_on_steps, replay_timed, requests_of,
)


def state(running_is_urgent: bool, waiting: list[Sequence], layer=0, run_s=1.0, num_layers=4):
    """A snapshot with the qllm policy's ranking: an urgent prompt outranks a non-urgent batch."""
    return CheckpointState(
        now_s=10.0, running_classes=("LS",) if running_is_urgent else ("BE",), running_is_urgent=running_is_urgent,
        running_is_prefill=True, layer=layer, expert=None, num_layers=num_layers, run_s=run_s,
        num_suspended=0, queued=lambda: waiting,
        outranking_queued=lambda: [s for s in waiting if s.is_urgent and s.is_prefill and not running_is_urgent],
    )  # fmt: skip


def queued(priority_class: str, waited_s: float, is_prefill: bool = True) -> Sequence:
    request = make_request(0, 4, 2, priority_class, arrival_s=10.0 - waited_s)
    sequence = Sequence(request=request, prompt_ids=[1, 2, 3, 4], kv=SequenceKV(BlockPool(16, 1)), ready_s=request.arrival_s)
    sequence.kv.num_tokens = 0 if is_prefill else 4
    return sequence


def ls_prompt(waited_s: float) -> Sequence:
    return queued("LS", waited_s)


def be_prompt() -> Sequence:
    return queued("BE", 9.0)


def test_strict_priority_preempts_exactly_when_queued_work_outranks_the_running_batch():
    policy = StrictPriority()
    assert policy.should_preempt(state(False, [ls_prompt(0.0)]))
    assert not policy.should_preempt(state(True, [ls_prompt(0.0)]))
    assert not policy.should_preempt(state(False, [be_prompt()]))
    assert not policy.should_preempt(state(False, [queued("LS", 1.0, is_prefill=False)]))
    assert not NeverPreempt().should_preempt(state(False, [ls_prompt(0.0)]))


def test_state_extrapolates_the_remaining_time_and_counts_queues():
    s = state(False, [ls_prompt(0.0), be_prompt(), be_prompt(), queued("LS", 2.0, is_prefill=False)], run_s=1.0)
    assert s.remaining_s == 3.0  # one layer took 1 s; three remain
    assert s.queue_lengths["BE", "prefill"] == 2 and s.queue_lengths["LS", "decode"] == 1
    assert sorted(w.waited_s for w in s.waiting) == [0.0, 2.0, 9.0, 9.0]
    assert [w.priority_class for w in s.outranking] == ["LS"]


def test_slo_slack_preempts_only_when_the_slo_would_otherwise_be_missed():
    policy = SLOSlack(ttft_slo_s=3.0, margin_s=0.5)
    # 3 s of the running pass remain; slack 3 - waited.
    assert not policy.should_preempt(state(False, [ls_prompt(waited_s=-1.0)]))  # slack 4 > 3.5
    assert policy.should_preempt(state(False, [ls_prompt(waited_s=0.0)]))  # slack 3 <= 3.5
    assert not policy.should_preempt(state(True, [ls_prompt(waited_s=2.9)]))  # nothing outranks an LS batch


def run_qllm(config, resources, specs, checkpoint_policy: dict, engine="qllm", **overrides):
    """`engine` with `checkpoint_policy` (a config node) on the step clock; every token checked."""
    cfg = engine_config(config, engine, checkpoint_policy=checkpoint_policy, policy__max_batch_size=4, **overrides)
    requests = requests_of(specs)
    recorder = replay_on_steps(resources, cfg, requests)
    assert_matches_oracle(resources.model, recorder, requests)
    recorder.waits = max_wait_s(requests, recorder)
    return recorder


STRICT = {"_target_": "qllm.preemption.StrictPriority"}


def slo_slack(ttft_slo_s: float) -> dict:
    return {"_target_": "qllm.preemption.SLOSlack", "ttft_slo_s": ttft_slo_s}


def test_slo_slack_preempts_at_the_layer_its_estimate_predicts(config, resources):
    """Layer i of a pass takes i + 1 time units (the head 1), so the estimate of the remaining time
    (the time per layer so far, times the layers left) changes from checkpoint to checkpoint."""
    num_layers = resources.model.config.num_hidden_layers
    cost = lambda checkpoint: 1.0 if checkpoint is None else checkpoint.layer + 1.0  # noqa: E731
    # An LS prompt arrives during the BE prefill's first layer, with an SLO where an estimate from the
    # measured time per layer and one from a unit per layer preempt at different layers.
    slo_s, arrival_s = 3.75, 0.5

    def predicted_layer(layer_cost) -> int | None:  # the checkpoint policy's arithmetic, checkpoint by checkpoint
        now_s = run_s = 0.0
        for layer in range(num_layers):
            now_s += cost(SimpleNamespace(layer=layer))
            run_s += layer_cost(layer)
            if slo_s - (now_s - arrival_s) <= run_s * (num_layers - layer - 1) / (layer + 1):
                return layer
        return None

    predicted = predicted_layer(lambda layer: cost(SimpleNamespace(layer=layer)))
    assert predicted not in (None, 0)  # the slack covers the first estimate, not a later one
    assert predicted != predicted_layer(lambda layer: 1.0)  # measured time, not a count of layers, decides
    specs = [(8, 2, "BE", 0), (4, 2, "LS", arrival_s)]
    cfg = engine_config(config, "qllm_slo_slack", checkpoint_policy=slo_slack(slo_s) | {"margin_s": 0.0})
    recorder = replay_timed(resources, cfg, requests_of(specs), cost)
    preempted_s = recorder.requests["r0"].preempted_s
    assert len(preempted_s) == 1
    layers_before = [q.layer for q in recorder.quanta if "r0" in q.request_ids and q.t_end_s <= preempted_s[0]]
    assert layers_before[-1] == predicted
    relaxed = replay_timed(resources, engine_config(config, "qllm_slo_slack", checkpoint_policy=slo_slack(100.0)),
                           requests_of(specs), cost)  # fmt: skip
    assert not relaxed.requests["r0"].preempted_s


class EvenLayersOnly:
    """A user's policy: strict priority, but only at even layer boundaries."""

    def should_preempt(self, state: CheckpointState) -> bool:
        return state.layer % 2 == 0 and StrictPriority().should_preempt(state)


def test_a_user_defined_policy_decides_where_preemption_happens(config, resources):
    user_policy = {"_target_": f"{__name__}.EvenLayersOnly"}
    recorder = run_qllm(config, resources, [(8, 2, "BE", 0), (4, 2, "LS", 1)], user_policy)
    preempted_s = recorder.requests["r0"].preempted_s[0]
    layers_before = [q.layer for q in recorder.quanta if "r0" in q.request_ids and q.t_end_s <= preempted_s]
    assert layers_before[-1] % 2 == 0


def endless_ls_stream(num_ls: int) -> list[tuple]:
    """BE work arrives first, then one LS request every step: without aging BE never runs."""
    be = [(6, 3, "BE", 0), (5, 3, "BE", 0)]
    return be + [(3, 4, "LS", t) for t in range(1, num_ls + 1)]


# The prototype's order starves BE work under an LS stream (the paper's stated limit); aging bounds it.


def test_without_aging_an_ls_stream_starves_be_work(config, resources):
    recorder = run_qllm(config, resources, endless_ls_stream(30), STRICT, engine="qllm_prototype")
    last_ls_finish = max(recorder.requests[f"r{i}"].finish_s for i in range(2, 32))
    assert recorder.requests["r0"].finish_s > last_ls_finish
    assert recorder.waits["r0"] > 100


def test_aging_bounds_every_be_wait_under_an_ls_stream(config, resources):
    bound = 6.0
    recorder = run_qllm(config, resources, endless_ls_stream(30), STRICT, engine="qllm_prototype", be_aging_s=bound)
    last_ls_finish = max(recorder.requests[f"r{i}"].finish_s for i in range(2, 32))
    for request_id in ("r0", "r1"):
        assert recorder.requests[request_id].finish_s < last_ls_finish
        # Promoted at the first scheduling decision after the bound, which may wait for the LS
        # pass then running: 3 layers + the head = 4 steps.
        assert recorder.waits[request_id] <= bound + 4, recorder.waits
