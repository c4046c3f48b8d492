"""Catch-up merge (`catch_up_merge`): an LS prompt that preempts a decode batch inside layer L runs
layers 0..L alone (a catch-up pass), then joins the suspended batch, whose pass runs the rest of the
model once for both. Every sequence still gets `generate`'s tokens; the merge happened where it
should (the LS prompt's solo work stopped at the batch's layer, the rest of the pass ran once, as
one mixed quantum per checkpoint listing every sequence); the simulator reaches the checkpoints the
real executor reaches and holds what it holds, and prices the merged pass as a mixed one.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.results.figures import preemption_rows
from harness.results.metrics import timeline_table
from harness.recorder import Recorder
from qllm.clock import VirtualClock
from qllm.real.executor import RealExecutor
from qllm.sim.executor import SimExecutor
from tests.helpers import StepClock, assert_matches_oracle, engine_config, replay_on_steps, requests_of
from tests.test_abort import find
from tests.test_executor import append, make_sequences, random_prompts, step, tiny_model, unfinished
from tests.test_executor import assert_matches_oracle as assert_sequences_match_oracle
from tests.test_families import family_resources
from tests.test_sim_executor import KnownCosts, batch_of, family_model

# Two BE requests decode in a batch of B = 2; LS prompts land during their decode passes (a step
# started at t occupies [t, t + 1)), at different layers and, at expert granularity, inside them.
TRACE = [(10, 12, "BE", 0), (9, 12, "BE", 0), (5, 3, "LS", 8.5), (7, 2, "LS", 17.5), (4, 3, "LS", 31.5),
         (6, 2, "LS", 47.5)]  # fmt: skip


def run_merging(resources, granularity: str, specs=TRACE, catch_up_merge: bool = True):
    cfg = engine_config(resources.cfg, "qllm", granularity=granularity, policy__max_batch_size=2,
                        catch_up_merge=catch_up_merge)  # fmt: skip
    requests = requests_of(specs)
    return replay_on_steps(resources, cfg, requests), requests


def merges(recorder, requests) -> list[tuple[str, list, list, list]]:
    """Per LS request whose prompt was merged: (its id, the quanta of its solo catch-up pass, the
    suspended batch's quanta of that pass before the merge, the merged quanta to the pass's end)."""
    found = []
    for request in requests:
        rid = request.request_id
        indexed = list(enumerate(recorder.quanta))
        merged_at = next((i for i, q in indexed if rid in q.request_ids and len(q.request_ids) > 1), None)
        if request.priority_class != "LS" or merged_at is None or recorder.quanta[merged_at].kind != "mixed":
            continue
        solo = [q for q in recorder.quanta[:merged_at] if q.request_ids == (rid,)]
        first_solo = next(i for i, q in indexed if q.request_ids == (rid,))
        others = tuple(r for r in recorder.quanta[merged_at].request_ids if r != rid)
        before = []  # the suspended pass's quanta: back from the LS prompt's first to the pass's start
        for q in reversed(recorder.quanta[:first_solo]):
            if q.request_ids != others or q.layer is None:
                break
            before.insert(0, q)
        end = next(i for i, q in indexed[merged_at:] if q.layer is None)
        found.append((rid, solo, before, recorder.quanta[merged_at : end + 1]))
    return found


@pytest.mark.parametrize("granularity", ["layer", "expert"])
def test_an_ls_prompt_catches_up_and_shares_the_rest_of_the_preempted_pass(config, resources, tiny_model, granularity):
    recorder, requests = run_merging(resources, granularity)
    assert_matches_oracle(tiny_model, recorder, requests)
    found = merges(recorder, requests)
    assert len(found) >= 2, "LS prompts should have preempted BE decode passes and joined them"
    num_layers = tiny_model.config.num_hidden_layers
    for rid, solo, before, merged in found:
        stopped = before[-1].layer  # the layer the BE pass was set aside in (after it, or inside it)
        assert stopped < num_layers - 1 and all(q.kind == "decode" for q in before)
        # The LS prompt's solo work: layers 0..stopped, ending after layer `stopped`, no LM head of its own.
        assert all(q.kind == "prefill" for q in solo)
        assert sorted({q.layer for q in solo}) == list(range(stopped + 1)) and solo[-1].layer == stopped
        # One pass for both from there: mixed quanta listing every sequence, to a single LM head.
        assert merged[0].is_resume and all(q.kind == "mixed" for q in merged)
        assert all(set(q.request_ids) == {rid, *before[-1].request_ids} for q in merged)
        # Layers after `stopped` run merged (at expert granularity, first the rest of layer `stopped` when the
        # BE pass stopped inside it: the prompt joins at the layer's end), then one LM head for all.
        layers = [q.layer for q in merged]
        assert layers[-1] is None and sorted(set(layers[:-1]) - {stopped}) == list(range(stopped + 1, num_layers))
        assert layers[: layers.count(stopped)] == [stopped] * layers.count(stopped)
        # Nothing ran twice: each checkpoint of the BE pass came once, before or after the merge.
        checkpoints = [(q.layer, q.expert) for q in before + merged]
        assert len(checkpoints) == len(set(checkpoints))
        if granularity == "layer":
            assert layers[:-1] == list(range(stopped + 1, num_layers)) and len(solo) == stopped + 1
    # The timeline figure marks the BE pass set aside, not the catch-up's end (its rows went on, merged).
    timeline = timeline_table(recorder, "run", "qllm", {r.request_id: r.priority_class for r in requests})
    marked = {(row.t_start_s, tuple(row.request_ids)) for row in timeline[preemption_rows(timeline)].itertuples()}
    for _, solo, before, _ in found:
        assert (before[-1].t_start_s, before[-1].request_ids) in marked
        assert (solo[-1].t_start_s, solo[-1].request_ids) not in marked


@pytest.mark.parametrize("granularity", ["layer", "expert"])
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=st.tuples(
    st.lists(st.tuples(st.integers(2, 10), st.integers(4, 10), st.just("BE"), st.integers(0, 2)), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(1, 10), st.integers(1, 4), st.just("LS"), st.integers(3, 40).map(lambda t: t + 0.5)),
             min_size=1, max_size=4),
).map(lambda both: both[0] + both[1]))  # BE work decoding, LS prompts landing in its passes
def test_random_traces_stay_token_exact_with_merging(config, resources, tiny_model, granularity, specs):
    recorder, requests = run_merging(resources, granularity, specs)
    assert_matches_oracle(tiny_model, recorder, requests)
    assert recorder.num_done == len(requests)


FAMILY_TRACE = [(10, 10, "BE", 0), (9, 10, "BE", 0), (5, 3, "LS", 6.5), (7, 2, "LS", 12.5), (4, 3, "LS", 21.5),
                (6, 2, "LS", 31.5)]  # fmt: skip


@pytest.mark.parametrize("granularity", ["layer", "expert"])
@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
def test_other_families_merge_token_exact(family, granularity):
    """Qwen2-MoE (shared expert, a sliding window, a dense layer) and DeepSeek-V3 (latent attention:
    keys and values of different widths, a dense first layer), two layers each."""
    resources = family_resources(family)
    recorder, requests = run_merging(resources, granularity, FAMILY_TRACE)
    assert_matches_oracle(resources.model, recorder, requests)
    assert merges(recorder, requests), "an LS prompt should have joined a BE decode pass"


@pytest.mark.parametrize("granularity, stops", [("layer", 1), ("layer", 2), ("expert", 1), ("expert", 4),
                                                ("expert", 7), ("expert", 9)])  # fmt: skip
def test_rows_that_caught_up_join_a_suspended_pass_at_its_next_layer_boundary(granularity, stops):
    """The executor alone: a decode pass stopped at its `stops`-th checkpoint (at expert granularity,
    inside a layer or at its end); two prompts run through its layers so far and are sent to it; its
    result covers both, and every sequence continues token-exact."""
    model = tiny_model(num_layers=3)
    executor = RealExecutor(model, granularity)
    decoding = make_sequences(executor, random_prompts(256, [6, 3, 8], seed=21), [5, 4, 5])
    prompts = make_sequences(executor, random_prompts(256, [7, 2], seed=22), [3, 4])
    step(executor, decoding)
    suspended = executor.forward(decoding)
    checkpoints = [next(suspended) for _ in range(stops)]
    caught_up, rows = drive(executor.catch_up(prompts, checkpoints[-1].layer + 1))
    assert rows.num_layers == checkpoints[-1].layer + 1 and all(seq.kv.is_in_flight for seq in prompts)
    assert {c.layer for c in caught_up} <= set(range(rows.num_layers))  # no checkpoint at its last layer's end
    after, tokens = drive(suspended, rows)
    assert after[0].layer >= checkpoints[-1].layer and len(tokens) == 5
    assert not any(seq.kv.is_in_flight for seq in decoding + prompts)  # the merged pass committed them all
    append(decoding + prompts, tokens)
    everyone = decoding + prompts
    while unfinished(everyone):
        step(executor, unfinished(everyone))
    assert_sequences_match_oracle(model, everyone)


def drive(forward_pass, sent=None) -> tuple[list, object]:
    """Run a (possibly suspended) pass to its end, sending `sent` first; (its checkpoints, its result)."""
    checkpoints = []
    while True:
        try:
            checkpoints.append(forward_pass.send(sent))
        except StopIteration as done:
            return checkpoints, done.value
        sent = None


@pytest.mark.parametrize("executor", ["real", "sim"])
def test_rows_are_refused_by_a_pass_at_another_layer(executor):
    model, config = family_model("mixtral")
    make = (lambda g: RealExecutor(model, g)) if executor == "real" else (lambda g: SimExecutor(config, VirtualClock(), KnownCosts, g))
    layered = make("layer")
    background, prompt = batch_of(layered)[:2], batch_of(layered)[2:]
    suspended = layered.forward(background)
    next(suspended)  # after layer 0: rows that ran layers 0..1 are a layer ahead
    _, rows = drive(layered.catch_up(prompt, 2))
    with pytest.raises(ValueError, match="cannot join"):
        drive(suspended, rows)
    assert not any(seq.kv.is_in_flight for seq in background + prompt)  # nothing left in flight


def catching_up(sequence, engine) -> bool:
    """A catch-up batch runs or waits, and `sequence` is in it or in the batch it will join."""
    running = engine.scheduler.running
    if running is None or running.joins is None:
        return False
    return sequence in running.sequences or sequence in running.joins.sequences


def joining(sequence, engine) -> bool:
    """The merged batch holds `sequence`, its caught-up rows not taken in yet (between two steps)."""
    running = engine.scheduler.running
    return running is not None and running.joining is not None and sequence in running.sequences


@pytest.mark.parametrize("victim, when", [("r4", catching_up), ("r0", catching_up), ("r2", joining), ("r0", joining)],
                         ids=["ls-catching-up", "be-awaiting-its-catch-up", "ls-joining", "be-joined"])  # fmt: skip
def test_an_abort_during_a_catch_up_or_a_merge_leaves_the_others_token_exact(config, resources, tiny_model, victim,
                                                                             when):  # fmt: skip
    """The LS prompt dropped while it catches up: the BE batch resumes alone. A BE sequence dropped while an
    LS prompt catches up with its batch, or once they merged: both batches dissolve and their other
    sequences redo their passes. Nothing stays in flight; everyone else finishes token-exact."""
    clock = StepClock()
    recorder = Recorder(clock)
    cfg = engine_config(config, "qllm", granularity="layer", policy__max_batch_size=2, catch_up_merge=True)
    engine = resources.build_engine(cfg, "qllm", clock, recorder)
    requests, aborted = requests_of(TRACE), False
    for _ in range(500):
        for request in requests:
            if request.arrival_s <= clock.t < request.arrival_s + 1:
                engine.submit(request)
        sequence = find(engine, victim) if not aborted else None
        if sequence is not None and when(sequence, engine):
            assert engine.abort(victim)
            aborted = True
            assert not sequence.kv.is_in_flight and sequence.kv.blocks == []
        if clock.t > max(r.arrival_s for r in requests) and engine.idle():
            break
        engine.step()
        clock.t += 1
    assert aborted, f"{victim} never reached the state to abort it in"
    assert engine.idle() and engine.scheduler.memory.pool.used_bytes == 0 and not engine.scheduler.suspended
    others = [r for r in requests if r.request_id != victim]
    assert_matches_oracle(tiny_model, recorder, others)


class PreemptForLSPrompts:
    """A user's checkpoint policy that sets any pass aside while an LS prompt waits, catch-up passes
    included (it declares nothing: `preempts_for` is anything)."""

    def should_preempt(self, state) -> bool:
        return any(w.priority_class == "LS" and w.is_prefill for w in state.waiting)


def test_a_catch_up_set_aside_still_joins_its_batch_which_never_resumes_alone(config, resources, tiny_model):
    """r4's catch-up (two layers) is set aside when r5 arrives; the scheduler then resumes it, not the BE
    batch it will join (that batch never runs alone before the merge), and r4 joins it after layer 1."""
    specs = [*TRACE[:5], (3, 2, "LS", 32.5)]
    policy = {"_target_": f"{__name__}.PreemptForLSPrompts"}
    cfg = engine_config(config, "qllm", granularity="layer", policy__max_batch_size=2, catch_up_merge=True,
                        checkpoint_policy=policy)  # fmt: skip
    requests = requests_of(specs)
    recorder = replay_on_steps(resources, cfg, requests)
    assert_matches_oracle(tiny_model, recorder, requests)
    solo, before, merged = next(m[1:] for m in merges(recorder, requests) if m[0] == "r4")
    assert [q.layer for q in solo] == [0, 1] and merged[0].layer == 2  # it caught up with layer 1, then joined
    assert solo[1].is_resume and recorder.requests["r4"].preempted_s  # its catch-up was set aside once
    between = [q for q in recorder.quanta if before[-1].t_start_s < q.t_start_s < merged[0].t_start_s]
    assert between == solo  # nothing but the catch-up ran until the merge
