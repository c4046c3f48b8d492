"""Mixed batches (`policy.mixed_batches`): prompts ride in the decode batch, one pass for both.

The executor runs a mixed pass as two row groups (decode rows, prompt rows) that attend
separately and share each layer's MLP half on their packed real tokens (qllm/real/row_groups.py);
every sequence must still get `generate`'s tokens, also when the pass is preempted inside a layer.
`qllm` keeps LS prompts out of mixed passes: they still run alone, so LS TTFT is unchanged.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qllm.executor import ATTENTION, run_to_completion
from qllm.real.executor import RealExecutor
from qllm.real.row_groups import pack, real_slots, rows_by_phase, unpack
from tests.helpers import assert_matches_oracle, engine_config, replay_on_steps, requests_of
from tests.test_executor import append, make_sequences, random_prompts, step, tiny_model, unfinished
from tests.test_executor import assert_matches_oracle as assert_sequences_match_oracle

MIXING_ENGINES = ["qllm", "fcfs_cb", "priority_cb"]
# BE work decodes while more BE prompts arrive; LS prompts land between and during passes.
TRACE = [(9, 6, "BE", 0), (4, 7, "BE", 0), (7, 5, "BE", 2), (3, 4, "LS", 3.5), (12, 3, "BE", 5), (5, 3, "BE", 5),
         (6, 2, "LS", 8.5)]  # fmt: skip


def run_mixed(config, resources, name: str, specs, **overrides):
    cfg = engine_config(config, name, policy__mixed_batches=True, **overrides)
    requests = requests_of(specs)
    return replay_on_steps(resources, cfg, requests, name), requests


@pytest.mark.parametrize("granularity", ["iteration", "layer", "expert"])
@pytest.mark.parametrize("name", MIXING_ENGINES)
def test_prompts_ride_in_decode_passes_and_every_token_matches_generate(config, resources, tiny_model, name,
                                                                         granularity):  # fmt: skip
    recorder, requests = run_mixed(config, resources, name, TRACE, granularity=granularity, policy__max_batch_size=4)
    assert_matches_oracle(tiny_model, recorder, requests)
    mixed = [q for q in recorder.quanta if q.kind == "mixed"]
    assert mixed, "BE prompts should have joined a decode pass"


def test_qllm_runs_ls_prompts_alone_in_mixed_mode(config, resources):
    recorder, requests = run_mixed(config, resources, "qllm", TRACE, policy__max_batch_size=4)
    for request in requests:
        if request.priority_class == "LS":
            first_token_s = recorder.requests[request.request_id].token_s[0]
            (last_quantum,) = [q for q in recorder.quanta if q.t_end_s == first_token_s and q.layer is None]
            assert last_quantum.kind == "prefill" and request.request_id in last_quantum.request_ids


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=st.lists(st.tuples(st.integers(1, 10), st.integers(1, 6), st.sampled_from(["LS", "BE"]),
                                st.integers(0, 12)), min_size=1, max_size=7))  # fmt: skip
def test_mixed_qllm_matches_generate_on_random_traces(config, resources, tiny_model, specs):
    recorder, requests = run_mixed(config, resources, "qllm", specs, granularity="expert", policy__max_batch_size=3)
    assert_matches_oracle(tiny_model, recorder, requests)


@pytest.mark.parametrize("granularity", ["layer", "expert"])
def test_a_mixed_pass_preempted_inside_a_layer_resumes_with_generates_tokens(granularity):
    model = tiny_model(num_layers=2)
    executor = RealExecutor(model, granularity)
    decoding, joining, urgent = (make_sequences(executor, random_prompts(256, lengths, seed=seed), outputs)
                                 for lengths, outputs, seed in (([6, 3], [5, 5], 11), ([9, 2], [4, 3], 12),
                                                                ([5], [3], 13)))  # fmt: skip
    step(executor, decoding)  # their prefill: they decode from now on
    mixed = executor.forward(decoding + joining)
    first = next(mixed)
    if granularity == "expert":
        assert first.expert == ATTENTION and next(mixed).expert >= 0  # stopped after an expert group
    while unfinished(urgent):
        step(executor, unfinished(urgent))
    append(decoding + joining, run_to_completion(mixed))
    everyone = decoding + joining + urgent
    while unfinished(everyone):
        step(executor, unfinished(everyone))
    assert_sequences_match_oracle(model, everyone)


def test_packing_keeps_real_tokens_in_order_and_zeros_the_padding():
    executor = RealExecutor(tiny_model())
    batch = make_sequences(executor, [[1, 2, 3], [4], [5, 6]], [2, 2, 2])
    step(executor, batch[1:2])  # r1 now decodes: a mixed batch of one decode row and two prompt rows
    assert rows_by_phase(batch) == [(1,), (0, 2)]
    caches = executor._new_caches(batch)
    groups, hiddens = executor._row_groups(batch, caches)
    assert real_slots(groups[1].cache).tolist() == [0, 1, 2, 3, 4]  # rows of 3 slots: 3 real, then 2 real
    packed = pack(hiddens, groups)  # [1 + 5, hidden]
    assert torch.equal(packed[0], hiddens[0][0, 0]) and torch.equal(packed[5], hiddens[1][1, 1])
    restored = unpack(packed, groups)
    assert torch.equal(restored[1][0], hiddens[1][0]) and not restored[1][1, 2].any()  # padded slot: zeros
    for cache in caches:
        cache.release()
