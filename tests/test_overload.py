"""Memory budget, admission control and overload: every request accounted for, and the KV reserved
plus the state of suspended passes (the rule the engine enforces, which bounds the KV allocated)
within the budget at every recorded instant; and the state a suspended real pass reports, against a
hand count of its tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from harness.engines import RunResources
from harness.results.metrics import requests_table, summary_table, timeline_table
from qllm.modeling.adapters import adapter_for
from qllm.executor import ATTENTION
from qllm.real.executor import RealExecutor
from tests.helpers import assert_matches_oracle, engine_config, replay_on_steps, requests_of


def run_with_budget(config, resources, specs, budget_tokens: int, **overrides):
    model = resources.model
    budget = budget_tokens * adapter_for(model).kv.bytes_per_token(model.dtype)
    cfg = engine_config(config, "qllm", memory_budget_mb=budget / 2**20, policy__max_batch_size=8, **overrides)
    requests = requests_of(specs)
    recorder = replay_on_steps(resources, cfg, requests)
    return recorder, requests, budget, timeline_table(recorder, "run", "qllm")


def held(timeline):
    """What the engine's memory rule bounds: reservations (>= the KV allocated) plus suspended state."""
    return timeline["kv_reserved_bytes"] + timeline["suspended_bytes"]


def test_a_request_that_can_never_fit_is_rejected_and_the_rest_wait_their_turn(config, resources):
    specs = [(30, 20, "BE", 0), (10, 5, "BE", 0), (10, 5, "BE", 0), (8, 4, "LS", 1)]
    recorder, requests, budget, timeline = run_with_budget(config, resources, specs, budget_tokens=32)
    assert "can never fit the memory budget" in recorder.requests["r0"].rejected_reason
    # r1 and r2 reserve a block of 16 tokens each; the LS request's block must wait for one to finish.
    assert recorder.requests["r3"].first_scheduled_s >= recorder.requests["r1"].finish_s
    assert_matches_oracle(resources.model, recorder, requests[1:])
    assert held(timeline).max() <= budget


def test_a_preemption_whose_state_does_not_fit_is_not_taken(config, resources):
    # Two BE prompts and an LS prompt reserve 3 blocks (48 tokens): with no room for the BE pass's
    # state the LS prompt waits for the pass to end; with room, it preempts the pass.
    specs = [(12, 3, "BE", 0), (12, 3, "BE", 0), (6, 2, "LS", 1)]
    tight, requests, budget, timeline = run_with_budget(config, resources, specs, budget_tokens=48)
    assert not any(events.preempted_s for events in tight.requests.values())
    be_pass_end = min(tight.requests["r0"].token_s)
    assert tight.requests["r2"].first_scheduled_s >= be_pass_end
    assert held(timeline).max() <= budget and timeline["kv_allocated_bytes"].max() > 0
    assert_matches_oracle(resources.model, tight, requests)
    roomy, _, budget, timeline = run_with_budget(config, resources, specs, budget_tokens=96)
    assert roomy.requests["r0"].preempted_s and roomy.requests["r2"].first_scheduled_s < min(roomy.requests["r0"].token_s)
    assert held(timeline).max() <= budget and timeline["suspended_bytes"].max() > 0


# BE work that starts at once, then arrivals of both classes that land mid-pass (a pass takes several steps).
be_head = st.lists(st.tuples(st.integers(1, 24), st.integers(1, 8), st.just("BE"), st.just(0)), min_size=1, max_size=3)
tail = st.lists(
    st.tuples(st.integers(1, 24), st.integers(1, 8), st.sampled_from(["LS", "LS", "BE"]), st.sampled_from([0.5, 1, 2.5, 4])),
    min_size=1, max_size=7,
)  # fmt: skip
trace_specs = st.builds(lambda head, rest: head + rest, be_head, tail)


def test_the_budget_holds_at_every_instant_and_every_request_ends(config, tiny_model):
    """Random traces and budgets that admit work (a budget that rejects everything proves nothing):
    reserved + suspended stays within the budget, every request ends, and the examples preempt."""
    preempting_examples = []

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(specs=trace_specs, budget_tokens=st.integers(24, 160), block_size=st.sampled_from([1, 4, 16]),
           granularity=st.sampled_from(["layer", "expert"]))  # fmt: skip
    def check(specs, budget_tokens, block_size, granularity):
        resources = RunResources(OmegaConf.merge(config, {"executor": {"kv_block_size": block_size}}), model=tiny_model)
        recorder, requests, budget, timeline = run_with_budget(config, resources, specs, budget_tokens,
                                                               granularity=granularity)  # fmt: skip
        admitted = [r for r in requests if recorder.requests[r.request_id].rejected_reason is None]
        assume(len(admitted) >= 2)
        assert (held(timeline) <= budget).all(), timeline[held(timeline) > budget]
        assert (timeline["kv_allocated_bytes"] <= timeline["kv_reserved_bytes"]).all()
        for request in requests:
            events = recorder.requests[request.request_id]
            if events.rejected_reason is None:
                assert len(events.token_ids) == request.output_len
            else:
                assert "can never fit the memory budget" in events.rejected_reason
        assert recorder.num_done == len(requests)
        preempting_examples.append(timeline["suspended_bytes"].max() > 0)

    check()
    assert sum(preempting_examples) >= 10, f"{sum(preempting_examples)} of {len(preempting_examples)} examples preempt"


def test_an_ls_request_is_admitted_beside_a_suspended_be_batch_only_where_both_fit(config, resources):
    # Two BE prompts (2 x 16 tokens reserved) run; the first LS request (16) preempts them mid-pass, and
    # their state is held while suspended; a second LS request arrives while they are suspended and must
    # leave room for that state: 64 tokens hold three reservations but not four plus the state.
    specs = [(12, 3, "BE", 0), (12, 3, "BE", 0), (6, 2, "LS", 1), (6, 2, "LS", 1.5)]
    recorder, requests, budget, timeline = run_with_budget(config, resources, specs, budget_tokens=64)
    assert recorder.requests["r0"].preempted_s  # the BE batch was suspended
    suspended = timeline[timeline["suspended_bytes"] > 0]
    assert len(suspended) and (held(suspended) <= budget).all(), timeline
    assert (held(timeline) <= budget).all()
    # The second LS request waited for memory: it is not admitted while the suspended state fills the room.
    assert recorder.requests["r3"].first_scheduled_s > recorder.requests["r2"].first_scheduled_s
    assert_matches_oracle(resources.model, recorder, requests)


def test_overload_runs_to_the_end_with_memory_bounded_and_every_request_accounted_for(config, resources):
    # 60 requests in 6 steps: far more than a budget of 80 KV tokens can serve at once.
    specs = [(4 + i % 9, 2 + i % 5, "LS" if i % 5 == 0 else "BE", i // 10) for i in range(60)]
    specs.append((70, 30, "BE", 0))  # can never fit
    recorder, requests, budget, timeline = run_with_budget(config, resources, specs, budget_tokens=80)
    statuses = ["rejected" if recorder.requests[r.request_id].rejected_reason else "finished" for r in requests]
    assert statuses.count("finished") == 60 and statuses.count("rejected") == 1
    assert all(len(recorder.requests[r.request_id].token_ids) == r.output_len for r in requests[:60])
    assert held(timeline).max() <= budget
    assert timeline["num_queued"].max() >= 40  # the queue really built up, and was reported
    assert timeline["num_queued"].iloc[-1] == 0 and timeline["kv_allocated_bytes"].iloc[-1] > 0


def test_summary_reports_peak_memory_and_the_longest_wait(config, resources):
    specs = [(8, 6, "BE", 0), (8, 6, "BE", 0), (4, 3, "LS", 1)]
    recorder, requests, budget, _ = run_with_budget(config, resources, specs, budget_tokens=64)
    df = requests_table(requests, recorder, {"LS": {"ttft_s": 3.0}}, "run", "qllm")
    summary = summary_table(df, recorder, {"engine": "qllm"}).set_index("priority_class")
    assert 0 < summary.loc["all", "peak_kv_reserved_bytes"] <= budget
    assert 0 < summary.loc["all", "peak_kv_needed_bytes"] <= summary.loc["all", "peak_kv_allocated_bytes"]
    assert summary.loc["all", "peak_suspended_bytes"] > 0  # the BE prefill was preempted mid-pass
    assert summary.loc["BE", "max_wait_s"] >= 1


# What a real pass reports it holds, against a hand count of its tensors. A bfloat16 Mixtral (hidden
# 64, 4 heads of 16, 4 experts, top 2, one attention window), 2 layers, sdpa (boolean masks), KV
# blocks of 16 tokens, over a mixed, padded batch: two decode rows (7 and 4 keys) and two prompts of
# 5 and 2 tokens, right-padded to 5.
HIDDEN, HEAD_DIM, TOP_K, NUM_EXPERTS = 64, 16, 2, 4
BF16, FP32, INT64, BOOL = 2, 4, 8, 1
DECODE = dict(rows=2, query=1, keys=7, real=2)
PROMPTS = dict(rows=2, query=5, keys=5, real=7)
TOKENS = DECODE["real"] + PROMPTS["real"]  # the pass's real tokens, packed for the MLP half
PACKED = TOKENS * HIDDEN * BF16  # one packed [tokens, hidden] activation


def group_inputs(rows, query, keys, real):
    """A row group's tensors for the whole pass: position ids, cos and sin, its one mask, the real
    slots where padded, and its cache's gather index (a block per row) and write index (slot, row,
    query slot per real token)."""
    padded = rows * query > real
    return (rows * query * INT64 + 2 * rows * query * HEAD_DIM * BF16 + rows * query * keys * BOOL
            + (real * INT64 if padded else 0) + rows * INT64 + 3 * real * INT64)  # fmt: skip


INPUTS = group_inputs(**DECODE) + group_inputs(**PROMPTS)
EMBEDDINGS = (DECODE["rows"] * DECODE["query"] + PROMPTS["rows"] * PROMPTS["query"]) * HIDDEN * BF16
# A layer's output, unpacked: the decode rows are a view of the packed output (its whole storage
# counts); the padded prompt rows a fresh [rows * query, hidden] tensor.
LAYER_OUTPUT = PACKED + PROMPTS["rows"] * PROMPTS["query"] * HIDDEN * BF16


def expected_held(granularity: str, implementation: str, layer: int, expert) -> int:
    """Bytes a pass suspended at checkpoint (layer, expert) keeps, counted by hand."""
    if granularity == "layer":  # the pass's inputs and the layer's output
        return INPUTS + LAYER_OUTPUT
    held = INPUTS + (EMBEDDINGS if layer == 0 else LAYER_OUTPUT)  # and the layer's input until its end
    if expert == ATTENTION:
        return held + PACKED  # the attended tokens
    if expert == "in block":  # attended tokens, MLP input, router weights (float32), expert index and its sort
        held += 2 * PACKED + TOKENS * TOP_K * (FP32 + INT64 + INT64)
        # partial sums: a running sum in the model dtype (eager), or one float32 output per slot
        return held + (PACKED if implementation == "eager" else TOKENS * TOP_K * HIDDEN * FP32)
    return held + 3 * PACKED  # after the MLP half: its input and output, and the layer's output


@pytest.mark.parametrize("implementation", ["grouped_mm", "eager"])
@pytest.mark.parametrize("granularity", ["layer", "expert"])
def test_a_real_pass_reports_the_tensors_it_holds_and_what_each_expert_received(granularity, implementation):
    from tests.test_executor import make_sequences, step
    from tests.test_moe import family_model

    model = family_model("mixtral", implementation, torch.bfloat16, num_layers=2)
    executor = RealExecutor(model, granularity)
    decoding = make_sequences(executor, [[5, 6, 7, 8, 9, 10], [11, 12, 13]], [3, 3])
    step(executor, decoding)  # their prefill: they decode from now on
    joining = make_sequences(executor, [[1, 2, 3, 4, 5], [6, 7]], [3, 3])
    routers = [parts.moe.router for parts in executor.adapter.parts]
    routed = {}  # layer -> the router's expert index [tokens, top_k]
    hooks = [router.register_forward_hook(lambda module, args, output, layer=layer: routed.update({layer: output[2]}))
             for layer, router in enumerate(routers)]  # fmt: skip
    forward_pass = executor.forward(decoding + joining)
    stops = [(checkpoint, forward_pass.held_bytes(), forward_pass.routed_tokens) for checkpoint in forward_pass]
    for hook in hooks:
        hook.remove()
    assert forward_pass.held_bytes() == 0  # an ended pass holds nothing
    assert len(stops) == (2 if granularity == "layer" else 2 * 2 + sum(len(r.unique()) - 1 for r in routed.values()))
    for number, (checkpoint, held, routed_tokens) in enumerate(stops):
        layer, expert = checkpoint.layer, checkpoint.expert
        ends_layer = number + 1 == len(stops) or stops[number + 1][0].layer != layer
        in_block = granularity == "expert" and expert != ATTENTION and not ends_layer
        assert held == expected_held(granularity, implementation, layer, "in block" if in_block else expert), checkpoint
        if in_block:  # the tokens each expert received, as the router chose them
            received = torch.bincount(routed[layer].flatten(), minlength=NUM_EXPERTS).tolist()
            assert routed_tokens == received and sum(received) == TOKENS * TOP_K
            assert received[expert] > 0  # the expert group just run received tokens
        else:
            assert routed_tokens is None, checkpoint
