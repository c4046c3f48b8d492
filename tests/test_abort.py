"""`QLLMEngine.abort`: a request dropped while waiting for memory, queued, running mid-pass or
suspended leaves every queue with its KV and reservation freed, and every other request still
finishes token-exact against `generate` (a dissolved batch's other sequences redo its pass)."""

from __future__ import annotations

import pytest

from harness.recorder import Recorder
from qllm.sequence import Sequence, SequenceStatus
from tests.helpers import ENGINES, StepClock, assert_matches_oracle, engine_config, requests_of

# Two long BE prompts share a batch of B = 2, a third BE request queues behind them, and an LS
# prompt arriving at step 1 preempts the BE batch between layers (the preempting policies).
SPECS = [(10, 5, "BE", 0), (9, 5, "BE", 0), (4, 4, "BE", 0), (5, 3, "LS", 1)]
MAX_STEPS = 500


def find(engine, request_id: str) -> Sequence | None:
    """The unfinished sequence of `request_id`, wherever the scheduler holds it."""
    scheduler = engine.scheduler
    in_flight = [batch for batch in (scheduler.running, *scheduler.suspended) if batch is not None]
    everywhere = [*scheduler.waiting, *scheduler.policy.queued(), *(s for b in in_flight for s in b.sequences)]
    return next((s for s in everywhere if s.request_id == request_id), None)


def run_with_abort(config, resources, name: str, victim: str, when, **overrides):
    """Replay SPECS one step per time unit; abort `victim` between steps once `when(sequence, engine)`
    holds, and check right then that it left with its KV and reservation. Returns
    (recorder, requests, engine, the aborted sequence)."""
    clock = StepClock()
    recorder = Recorder(clock)
    engine = resources.build_engine(engine_config(config, name, **overrides), name, clock, recorder)
    requests, aborted = requests_of(SPECS), None
    for _ in range(MAX_STEPS):
        for request in requests:
            if request.arrival_s == clock.t:
                engine.submit(request)
        sequence = find(engine, victim) if aborted is None else None
        if sequence is not None and when(sequence, engine):
            reserved_before = engine.scheduler.memory.reserved_bytes
            assert engine.abort(victim)
            aborted = sequence
            assert find(engine, victim) is None and sequence.status == SequenceStatus.ABORTED
            assert sequence.kv.blocks == [] and not sequence.kv.is_in_flight
            was_admitted = reserved_before > engine.scheduler.memory.reserved_bytes
            assert was_admitted or sequence.kv.num_tokens == 0
        if clock.t > max(r.arrival_s for r in requests) and engine.idle():
            break
        engine.step()
        clock.t += 1
    assert aborted is not None, f"{victim} never reached the state to abort it in"
    scheduler = engine.scheduler
    assert engine.idle() and scheduler.memory.reserved_bytes == 0 and scheduler.memory.pool.used_bytes == 0
    for counter in ("num_running", "num_active"):  # the policies that count admitted, unfinished sequences
        assert getattr(scheduler.policy, counter, 0) == 0, counter
    return recorder, requests, engine, aborted


def is_mid_pass(sequence: Sequence, engine=None) -> bool:
    return sequence.status == SequenceStatus.RUNNING


def is_waiting_behind_an_admitted_one(sequence: Sequence, engine) -> bool:
    return sequence.status == SequenceStatus.WAITING and engine.scheduler.memory.reserved_bytes > 0


@pytest.mark.parametrize(
    "victim, when, overrides",
    [
        # r1 cannot fit beside r0 in a budget of 1.5 of their reservations: it waits for memory
        ("r1", is_waiting_behind_an_admitted_one, {"memory_budget_mb": 0.02}),
        ("r2", lambda s, e: s.status == SequenceStatus.QUEUED, {}),
        ("r0", is_mid_pass, {}),  # prefill pass stopped after its first layer
        ("r0", lambda s, e: is_mid_pass(s) and len(s.output_ids) == 2, {}),  # a decode pass
        ("r0", lambda s, e: s.status == SequenceStatus.SUSPENDED, {}),  # the LS prompt preempted it
    ],
    ids=["waiting", "queued", "running-prefill", "running-decode", "suspended"],
)
def test_an_aborted_request_leaves_with_its_kv_and_the_others_finish_token_exact(
    config, resources, tiny_model, victim, when, overrides
):
    recorder, requests, engine, _ = run_with_abort(
        config, resources, "qllm", victim, when, granularity="layer", policy__max_batch_size=2, **overrides
    )
    others = [r for r in requests if r.request_id != victim]
    assert_matches_oracle(tiny_model, recorder, others)
    assert recorder.requests[victim].finish_s is None  # neither finished nor rejected
    assert recorder.num_done == len(others)


def test_a_dissolved_batch_redoes_its_pass_from_where_its_kv_was(config, resources, tiny_model):
    """r1 shared r0's prefill batch when r0 was aborted after its first layer: r1's prompt pass
    runs again over every layer (the closed pass committed nothing), in a pass of its own or riding
    in a decode pass (mixed batches)."""
    recorder, requests, _, _ = run_with_abort(
        config, resources, "qllm", "r0", is_mid_pass, granularity="layer", policy__max_batch_size=2
    )
    prefill_layers = [q.layer for q in recorder.quanta
                      if q.kind in ("prefill", "mixed") and "r1" in q.request_ids and q.layer is not None]  # fmt: skip
    num_layers = tiny_model.config.num_hidden_layers
    assert prefill_layers[0] == 0 and sorted(prefill_layers[1:]) == list(range(num_layers))


@pytest.mark.parametrize("name", [e for e in ENGINES if e != "hf_generate"])
def test_every_policy_keeps_its_batch_limit_and_serves_everyone_after_an_abort(config, resources, tiny_model, name):
    """Abort r0 once it has a token (queued to decode or inside a batch): the policy's count of
    running sequences drops, so r2 is still admitted, and no batch exceeds B = 2."""
    recorder, requests, _, _ = run_with_abort(
        config, resources, name, "r0", lambda s, e: len(s.output_ids) >= 1, policy__max_batch_size=2
    )
    assert_matches_oracle(tiny_model, recorder, [r for r in requests if r.request_id != "r0"])
    assert max(len(q.request_ids) for q in recorder.quanta) <= 2


def test_aborting_an_unknown_or_finished_request_changes_nothing(config, resources):
    clock = StepClock()
    engine = resources.build_engine(engine_config(config, "qllm"), "qllm", clock, Recorder(clock))
    engine.submit(requests_of([(4, 1, "LS", 0)])[0])
    while not engine.idle():
        engine.step()
    assert not engine.abort("r0") and not engine.abort("nobody") and engine.idle()
