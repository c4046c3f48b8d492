"""The simulated executor against the real one: the same checkpoints and the same suspended state
for the same batch, granularity and routing; time from the cost model's stages; skipping idle
checkpoints changes no schedule; KV and suspended state accounted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from harness.app import compose_config
from qllm.clock import VirtualClock
from harness.engines import RunResources
from harness.results.metrics import requests_table, timeline_table
from harness.recorder import Recorder
from harness.replay import replay
from qllm.batch import Batch
from qllm.executor import ATTENTION, Checkpoint, run_to_completion
from qllm.real.executor import RealExecutor
from qllm.request import Request
from qllm.scheduler import Scheduler
from qllm.sequence import Sequence
from qllm.sim.cost_model import PassShape, StageCosts
from qllm.sim.executor import PLACEHOLDER_TOKEN, SimExecutor
from qllm.sim.plan import WholeLayerPlan
from qllm.sim.routing import UniformRouting
from tests.helpers import engine_config

COSTS = StageCosts(pass_start_s=1.0, attention_s=2.0, router_s=0.3, combine_s=0.4, shared_expert_s=0.5,
                   dense_mlp_s=0.6, layer_s=3.0, pass_end_s=7.0, checkpoint_s=0.01, pass_overhead_s=0.02)  # fmt: skip
EXPERT_S = 0.1  # per routed expert, plus 0.001 s per token it received
IDLE_S_PER_S = 0.25  # a pass after the engine idled starts later by this share of the time idle
AFTER_PROMPTS_S_PER_TOKEN = 0.05  # PromptsCostMore: the first decode pass after prompts ends later by this per prompt token


class KnownCosts:
    """A cost model whose every stage is a known constant, for exact expectations."""

    def __init__(self, model) -> None:
        self.model = model

    def stage_costs(self, shape) -> StageCosts:
        return COSTS

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        return np.where(tokens > 0, EXPERT_S + 0.001 * tokens, 0.0)

    def idle_s(self, gap_s: float) -> float:
        return IDLE_S_PER_S * gap_s

    def wake_s(self, gap_s: float) -> float:
        return 0.0

    def after_prompts_s(self, prompt_tokens: int, step_after: int, decode_s: float) -> float:
        return 0.0

    def in_run_passes(self, granularity: str) -> list:
        return []


class FixedRouting:
    """The routing a real pass had: tokens per expert per MoE layer."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def tokens_per_expert(self, num_layers: int, num_tokens: int) -> np.ndarray:
        return self.tokens


FAMILIES = {  # model config, overrides: Mixtral; Qwen2-MoE's shared expert; a dense layer; every other family
    "mixtral": ("tiny_mixtral", []),
    "shared_expert": ("tiny_qwen2_moe", []),
    "dense_layer": ("tiny_qwen2_moe", ["+model.config.mlp_only_layers=[1]"]),
    "qwen3_moe": ("tiny_qwen3_moe", []),
    "olmoe": ("tiny_olmoe", []),
    "phimoe": ("tiny_phimoe", []),
    "granitemoe": ("tiny_granitemoe", []),
    "granitemoeshared": ("tiny_granitemoeshared", []),
    "latent_attention": ("tiny_deepseek_v3", []),  # K and V of different widths; a dense first layer; shared expert
}
PROMPTS = [5, 9, 2]


def family_model(family: str):
    name, overrides = FAMILIES[family]
    cfg = compose_config(f"model={name}", "model.config.num_hidden_layers=3", *overrides)
    return RunResources(cfg).model, RunResources(cfg).model_config


def batch_of(executor) -> list[Sequence]:
    return [Sequence(Request(f"r{i}", 0.0, p, 3, "BE", 1), list(range(1, p + 1)), executor.new_kv())
            for i, p in enumerate(PROMPTS)]  # fmt: skip


def run_pass(executor, phase: str = "prefill") -> tuple[list[tuple[Checkpoint, int, list[int] | None]], list[int]]:
    """Every checkpoint of one pass of PROMPTS' rows, with the bytes the executor reports the pass
    would hold there, suspended, and the tokens it reports each expert of the MoE block it is in
    received; and the pass's tokens. `phase`: prefill; decode (the step after that prefill); or
    mixed (rows 0 and 2 decode after their prefill while row 1 feeds its prompt, as a policy's
    `mixed_batches` runs them)."""
    sequences = batch_of(executor)
    if phase != "prefill":
        prefill(executor, sequences if phase == "decode" else sequences[::2])
    batch = Batch.of(sequences)
    batch.forward_pass = executor.forward(sequences)
    stops = []
    while True:
        try:
            checkpoint = next(batch.forward_pass)
        except StopIteration as done:
            return stops, done.value
        stops.append((checkpoint, batch.forward_pass.held_bytes(), batch.forward_pass.routed_tokens))


def prefill(executor, sequences: list[Sequence]) -> None:
    """Run the sequences' prompts and append each one's token: their next pass decodes."""
    for sequence, token in zip(sequences, run_to_completion(executor.forward(sequences))):
        sequence.output_ids.append(token)


def real_routing(model, num_experts: int, phase: str = "prefill") -> np.ndarray:
    """Which experts received tokens in each MoE layer of the real pass (from its checkpoints at one
    expert per group), as token counts of 1."""
    stops, _ = run_pass(RealExecutor(model, "expert", 1), phase)
    routed = [c for c, *_ in stops if c.expert not in (None, ATTENTION)]
    sparse = sorted({c.layer for c in routed})
    tokens = np.zeros((len(sparse), num_experts), dtype=int)
    for checkpoint in routed:
        if checkpoint.expert < num_experts:  # not the shared expert
            tokens[sparse.index(checkpoint.layer), checkpoint.expert] = 1
    return tokens


STOPS = [("iteration", 1), ("layer", 1), ("expert", 1), ("expert", 2), ("expert", 3)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("granularity, group, phase", [(*stop, "prefill") for stop in STOPS] +
                         [(*stop, phase) for stop in STOPS if stop[1] == 1 for phase in ("decode", "mixed")])  # fmt: skip
def test_the_sim_stops_where_the_real_executor_does_holding_what_it_holds(family, granularity, group, phase):
    model, config = family_model(family)
    real_stops, real_tokens = run_pass(RealExecutor(model, granularity, group), phase)
    sim = SimExecutor(config, VirtualClock(), KnownCosts, granularity, group)
    sim.routing = FixedRouting(real_routing(model, sim.model.num_experts, phase))
    sim_stops, sim_tokens = run_pass(sim, phase)
    assert [c for c, *_ in sim_stops] == [c for c, *_ in real_stops]
    assert all(held > 0 for _, held, _ in real_stops)
    assert [held for _, held, _ in sim_stops] == [held for _, held, _ in real_stops]  # estimated from shapes, exactly
    # Inside an MoE block both report which experts received tokens (the sim's routing is the real one's).
    assert [None if r is None else np.flatnonzero(r).tolist() for *_, r in sim_stops] == \
        [None if r is None else np.flatnonzero(r).tolist() for *_, r in real_stops]
    assert len(sim_tokens) == len(real_tokens) and set(sim_tokens) == {PLACEHOLDER_TOKEN}
    if granularity == "expert":
        assert any(c.expert not in (None, ATTENTION) for c, *_ in sim_stops)
        assert (family in ("dense_layer", "latent_attention")) == any(c.expert is None for c, *_ in sim_stops)


def layer_checkpoint_bytes(batch: int, query: int, key: int, real: int, blocks: int) -> int:
    """What a pass of tiny_mixtral (hidden 64, 4 heads of 16, float32, one attention window, KV blocks
    of 16) holds at a layer boundary, tensor by tensor, counted by hand."""
    tokens = batch * query
    residual = tokens * 64 * 4  # [batch, query, hidden] float32
    cos_sin = 2 * tokens * 16 * 4  # [batch, query, head_dim] each
    position_ids = tokens * 8  # int64
    mask = batch * query * key  # one boolean [batch, 1, query, key]
    real_index = real * 8 if real < tokens else 0  # where the real tokens sit among padded slots
    write_index = 3 * real * 8  # the cache's (pool slot, row, query slot) per real token
    gather_index = batch * blocks * 8  # the batch's block tables
    return residual + cos_sin + position_ids + mask + real_index + write_index + gather_index


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_the_bytes_held_at_a_layer_checkpoint_are_the_tensors_counted_by_hand(phase):
    model, config = family_model("mixtral")
    # PROMPTS [5, 9, 2]: a prefill pads 3 rows to 9 tokens (16 real); a decode feeds 1 token per row
    # against at most 10 cached; every row fits one block of 16.
    expected = layer_checkpoint_bytes(3, 9, 9, 16, 1) if phase == "prefill" else layer_checkpoint_bytes(3, 1, 10, 3, 1)
    for executor in (RealExecutor(model, "layer"), SimExecutor(config, VirtualClock(), KnownCosts, "layer")):
        stops, _ = run_pass(executor, phase)
        assert [held for _, held, _ in stops] == [expected] * 3, type(executor).__name__


def test_the_clock_advances_by_the_cost_models_stages():
    """Expert granularity on known costs: each checkpoint's time is the sum of the stages before it."""
    _, config = family_model("mixtral")
    clock = VirtualClock()
    sim = SimExecutor(config, clock, KnownCosts, "expert", 1)
    tokens = np.array([[3, 0, 1, 0, 0, 0, 2, 0]] * 3)  # experts 0, 2, 6 receive 3, 1 and 2 tokens in each layer
    sim.routing = FixedRouting(tokens)
    times, expected = [], []
    forward_pass = sim.forward(batch_of(sim))
    for checkpoint in forward_pass:
        times.append((checkpoint, clock.now()))
    t = COSTS.pass_overhead_s + COSTS.pass_start_s
    for layer in range(3):
        t += COSTS.attention_s
        expected.append((Checkpoint(layer, ATTENTION), t))
        for expert, received in ((0, 3), (2, 1), (6, 2)):
            t += COSTS.checkpoint_s + EXPERT_S + 0.001 * received
            t += COSTS.router_s if expert == 0 else COSTS.combine_s if expert == 6 else 0.0
            expected.append((Checkpoint(layer, expert), t))
        t += COSTS.checkpoint_s
    assert [c for c, _ in times] == [c for c, _ in expected]
    assert np.allclose([s for _, s in times], [s for _, s in expected], rtol=0, atol=1e-12)
    assert clock.now() == pytest.approx(t + COSTS.pass_end_s)


def test_a_pass_after_the_engine_idled_starts_late_by_the_cost_models_idle_delay():
    """On known costs: the run's first pass and one straight after it start at once; one after the
    engine has idled for 40 s starts the cost model's idle_s(40 s) late (10 s), and the one after it
    at once again."""
    _, config = family_model("mixtral")
    clock = VirtualClock()
    sim = SimExecutor(config, clock, KnownCosts, "layer")
    ends = []
    for idle_s in (0.0, 0.0, 40.0, 0.0):
        clock.sleep_until(clock.now() + idle_s)
        run_to_completion(sim.forward(batch_of(sim)))
        ends.append(clock.now())
    pass_s = ends[0]
    late = 40.0 + IDLE_S_PER_S * 40.0
    assert ends == pytest.approx([pass_s, 2 * pass_s, 3 * pass_s + late, 4 * pass_s + late], abs=1e-9)


class PromptsCostMore(KnownCosts):
    """KnownCosts, and the k-th decode pass after prompts ends AFTER_PROMPTS_S_PER_TOKEN / k later per
    prompt token, for k = 1 and 2."""

    asked: list[tuple[int, int, float]] = []  # (prompt tokens, step after, the decode pass's seconds) per delay priced

    def after_prompts_s(self, prompt_tokens: int, step_after: int, decode_s: float) -> float:
        self.asked.append((prompt_tokens, step_after, decode_s))
        return AFTER_PROMPTS_S_PER_TOKEN * prompt_tokens / step_after if step_after <= 2 else 0.0


def test_the_decode_passes_after_prompts_start_late_by_the_cost_models_delay():
    """On known costs: the k-th decode pass after a prefill ends late by the cost model's
    after_prompts_s(the prompt tokens, k, the pass's own time); a prefill does not, and it starts the
    count again; a mixed pass (decode rows beside a prompt) counts as a prefill."""
    _, config = family_model("mixtral")
    clock = VirtualClock()
    sim = SimExecutor(config, clock, PromptsCostMore, "layer")
    PromptsCostMore.asked = []
    first, late = batch_of(sim), batch_of(sim)[:1]

    def pass_s(batch: list[Sequence]) -> float:
        start = clock.now()
        prefill(sim, batch)  # every row's token appended: its next pass decodes
        return clock.now() - start

    plain_s = WholeLayerPlan.of(sim.model, COSTS, "layer").total_s  # any shape: every stage a constant
    delay_s = AFTER_PROMPTS_S_PER_TOKEN * sum(PROMPTS)
    assert [pass_s(first) for _ in range(4)] == pytest.approx([plain_s, plain_s + delay_s, plain_s + delay_s / 2, plain_s])
    assert PromptsCostMore.asked == [(sum(PROMPTS), k, pytest.approx(plain_s)) for k in (1, 2, 3)]
    pass_s(first + late)  # mixed: 3 decode rows beside a prompt of PROMPTS[0] tokens
    assert len(PromptsCostMore.asked) == 3
    delay_s = AFTER_PROMPTS_S_PER_TOKEN * PROMPTS[0]
    assert [pass_s(first + late), pass_s(first + late)] == pytest.approx([plain_s + delay_s, plain_s + delay_s / 2])


class RoutingPerPass:
    """Each pass's routing in the order passes are planned (tokens per expert per MoE layer)."""

    def __init__(self, *tokens: np.ndarray) -> None:
        self.tokens = list(tokens)

    def tokens_per_expert(self, num_layers: int, num_tokens: int) -> np.ndarray:
        return self.tokens.pop(0)


def routing_of(checkpoints: list[Checkpoint], sim: SimExecutor) -> np.ndarray:
    """The experts that received tokens in each MoE layer, as counts of 1, read from a real pass's
    checkpoints at one expert per group (layers it has no checkpoint in: every expert)."""
    model = sim.model
    tokens = np.ones((sim.num_sparse_layers, model.num_experts), dtype=int)
    sparse = list(model.sparse_layer_indices)
    for layer in {c.layer for c in checkpoints if c.expert not in (None, ATTENTION)}:
        tokens[sparse.index(layer)] = 0
    for c in checkpoints:
        if c.expert not in (None, ATTENTION) and c.expert < model.num_experts:
            tokens[sparse.index(c.layer), c.expert] = 1
    return tokens


def ls_prompt(executor) -> list[Sequence]:
    return [Sequence(Request("ls", 0.0, 6, 3, "LS", 0), list(range(3, 9)), executor.new_kv())]


def merged_run(executor, stops: int) -> list[list[tuple[Checkpoint, int, list[int] | None]]]:
    """A decode pass stopped at its `stops`-th checkpoint, an LS prompt's catch-up pass up to that
    layer, and the decode pass going on with the prompt's rows: each one's checkpoints, with the
    bytes the executor reports the pass would hold there, suspended, and the tokens it reports each
    expert of the MoE block it is in received."""
    sequences = batch_of(executor)
    prefill(executor, sequences)
    decode = Batch.of(sequences)
    decode.forward_pass = executor.forward(sequences)
    before = []
    for _ in range(stops):
        before.append((next(decode.forward_pass), decode.forward_pass.held_bytes(), decode.forward_pass.routed_tokens))
    catch_up = Batch.of(ls_prompt(executor))
    catch_up.forward_pass = executor.catch_up(catch_up.sequences, before[-1][0].layer + 1)
    parts, sent = [before], None
    for batch in (catch_up, decode):
        stops_of_part = []
        while True:
            try:
                checkpoint = batch.forward_pass.send(sent)
            except StopIteration as done:
                sent = done.value
                break
            sent = None
            stops_of_part.append((checkpoint, batch.forward_pass.held_bytes(), batch.forward_pass.routed_tokens))
        parts.append(stops_of_part)
    assert len(sent) == len(sequences) + 1  # tokens for the decode rows and the prompt
    return parts


@pytest.mark.parametrize("family", ["mixtral", "shared_expert", "dense_layer", "latent_attention"])
@pytest.mark.parametrize("granularity, stops", [("layer", 1), ("layer", 2), ("expert", 1), ("expert", 3),
                                                ("expert", 6)])  # fmt: skip
def test_the_sim_merges_a_caught_up_prompt_where_the_real_executor_does(family, granularity, stops):
    """Catch-up merge: the suspended decode pass, the prompt's catch-up pass and the merged pass reach the
    same checkpoints on both executors (at expert granularity, inside the layer the decode pass stopped
    in, then the merged layers), and each suspended pass reports the same bytes, the waiting rows included."""
    model, config = family_model(family)
    real = merged_run(RealExecutor(model, granularity, 1), stops)
    sim = SimExecutor(config, VirtualClock(), KnownCosts, granularity, 1)
    if granularity == "expert":  # each pass's real routing: prefill (no stop), decode, the prompt alone, merged
        solo, stopped_in = RealExecutor(model, granularity, 1), real[0][-1][0].layer
        merged = [c for c, *_ in real[2]]
        decode = [c for c, *_ in real[0]] + [c for c in merged if c.layer == stopped_in]  # its later layers: every expert
        sim.routing = RoutingPerPass(routing_of([], sim), routing_of(decode, sim),
                                     routing_of(list(solo.forward(ls_prompt(solo))), sim), routing_of(merged, sim))  # fmt: skip
    simulated = merged_run(sim, stops)
    assert [[c for c, *_ in part] for part in simulated] == [[c for c, *_ in part] for part in real]
    assert [[held for _, held, _ in part] for part in simulated] == [[held for _, held, _ in part] for part in real]
    # Inside an MoE block both report which experts received tokens: in the layer the decode pass stopped
    # in, its own rows' routing (the rows sent wait); after it, the merged pass's.
    experts = lambda routed: None if routed is None else np.flatnonzero(routed).tolist()  # noqa: E731
    assert [[experts(r) for *_, r in part] for part in simulated] == [[experts(r) for *_, r in part] for part in real]
    assert all(c.layer <= real[0][-1][0].layer for c, *_ in real[1])  # the catch-up stops in the decode pass's layer
    assert real[2][-1][0].layer == config.num_hidden_layers - 1


def test_rows_waiting_to_join_a_pass_are_held_by_it_counted_by_hand():
    """Catch-up merge at expert granularity: the LS prompt's rows (one row of 6 tokens, run through layer
    0), sent to a decode pass stopped after layer 0's attention, wait there until its layer 0 ends. At
    each checkpoint until then the pass reports what the same pass without them holds plus the rows'
    tensors at a layer boundary, counted by hand (their hidden states, row group inputs, cache indices);
    once they joined, they are its own rows and it holds more than that."""
    model, config = family_model("mixtral")
    waiting = layer_checkpoint_bytes(1, 6, 6, 6, 1)
    executors = {"real": lambda: RealExecutor(model, "expert", 1),
                 "sim": lambda: SimExecutor(config, VirtualClock(), KnownCosts, "expert", 1)}  # fmt: skip
    for name, make in executors.items():
        alone, merged = (make() for _ in range(2))  # two passes over equal batches, each on its own executor
        if name == "sim":  # the same routing for both passes (and the prompt's), every expert hit
            for sim in (alone, merged):
                sim.routing = FixedRouting(np.ones((sim.num_sparse_layers, sim.model.num_experts), dtype=int))
        passes = []
        for executor in (alone, merged):
            sequences = batch_of(executor)
            prefill(executor, sequences)
            passes.append(executor.forward(sequences))
        alone_pass, merged_pass = passes
        assert next(alone_pass) == next(merged_pass) == Checkpoint(layer=0, expert=ATTENTION)
        _, rows = drive(merged.catch_up(ls_prompt(merged), 1))
        in_layer_0, sent = 0, rows
        while True:
            checkpoint, sent = merged_pass.send(sent), None
            assert next(alone_pass) == checkpoint, name
            if checkpoint.layer > 0:
                break
            assert merged_pass.held_bytes() == alone_pass.held_bytes() + waiting, (name, checkpoint)
            in_layer_0 += 1
        assert in_layer_0 > 1  # layer 0's expert groups and its end
        assert merged_pass.held_bytes() > alone_pass.held_bytes() + waiting, name  # joined: its packed tokens too
        merged_pass.close()
        alone_pass.close()


def test_a_catch_up_costs_its_layers_and_the_merged_pass_a_mixed_passs_remaining_layers():
    """Layer granularity on known costs: the prompt alone pays the pass's start and layer 0; the merged
    pass pays each remaining layer once, with one attention half per row group and one MoE half."""
    _, config = family_model("mixtral")
    clock = VirtualClock()
    sim = SimExecutor(config, clock, KnownCosts, "layer")
    sequences = batch_of(sim)
    prefill(sim, sequences)
    decode = sim.forward(sequences)
    assert next(decode) == Checkpoint(layer=0)
    t0 = clock.now()
    checkpoints, rows = drive(sim.catch_up(ls_prompt(sim), 1))
    assert checkpoints == []  # layer 0 is its last: it ends there
    t1 = clock.now()
    assert t1 - t0 == pytest.approx(COSTS.pass_overhead_s + COSTS.pass_start_s + COSTS.layer_s)
    merged_layer_s = COSTS.layer_s + COSTS.attention_s  # two attention halves (decode rows, prompt rows), one MoE
    times = []
    sent = rows
    while True:
        try:
            decode.send(sent)
        except StopIteration:
            break
        sent = None
        times.append(clock.now())
    expected = [t1 + COSTS.checkpoint_s + merged_layer_s, t1 + 2 * (COSTS.checkpoint_s + merged_layer_s)]
    assert times == pytest.approx(expected)
    assert clock.now() == pytest.approx(expected[-1] + COSTS.checkpoint_s + COSTS.pass_end_s)


class RowCosts(KnownCosts):
    """KnownCosts, but the pass's end and the engine's own work cost in proportion to the pass's rows."""

    def stage_costs(self, shape) -> StageCosts:
        rows = shape.batch_size
        return dataclasses.replace(COSTS, pass_end_s=COSTS.pass_end_s * rows, checkpoint_s=COSTS.checkpoint_s * rows,
                                   pass_overhead_s=COSTS.pass_overhead_s * rows)  # fmt: skip


@pytest.mark.parametrize("cost_model", [KnownCosts, RowCosts])
def test_a_mixed_pass_costs_each_row_groups_attention_and_one_moe_half_per_layer(cost_model):
    """Layer granularity: a pass of two decode rows and a prompt row (mixed_batches) sets up each row
    group (two pass starts) and runs two attention halves per layer, one per group, and the MoE half
    once on their packed tokens; its end (the LM head) and the engine's own work are one pass's over
    all three rows (RowCosts: a third of that if priced on the prompt's group alone)."""
    _, config = family_model("mixtral")
    clock = VirtualClock()
    sim = SimExecutor(config, clock, cost_model, "layer")
    sequences = batch_of(sim)
    prefill(sim, sequences[::2])
    start = clock.now()
    checkpoints, tokens = drive(sim.forward(sequences))
    assert checkpoints == [Checkpoint(layer=layer) for layer in range(3)] and len(tokens) == 3
    costs = cost_model(sim.model).stage_costs(PassShape(3, 1, 9))
    layer_s = COSTS.layer_s + COSTS.attention_s  # two attention halves, one MoE half
    assert clock.now() - start == pytest.approx(costs.pass_overhead_s + 2 * COSTS.pass_start_s + 3 * layer_s +
                                                3 * costs.checkpoint_s + costs.pass_end_s)  # fmt: skip
    assert [s.kv.num_tokens for s in sequences] == [6, 9, 3]  # each row's KV committed


def drive(forward_pass) -> tuple[list, object]:
    checkpoints = []
    while True:
        try:
            checkpoints.append(next(forward_pass))
        except StopIteration as done:
            return checkpoints, done.value


def test_the_sim_reports_its_drawn_routing_inside_each_moe_block():
    _, config = family_model("dense_layer")  # MoE layers 0 and 2 (with a shared expert); layer 1 dense
    sim = SimExecutor(config, VirtualClock(), KnownCosts, "expert", 1)
    tokens = np.zeros((2, sim.model.num_experts), dtype=int)
    tokens[0, [0, 3]], tokens[1, [1, 2, 4]] = [20, 12], [10, 10, 12]
    sim.routing = FixedRouting(tokens)
    forward_pass = sim.forward(batch_of(sim))
    reported = [(c.layer, c.expert, forward_pass.routed_tokens) for c in forward_pass]
    # Between a block's expert groups (the shared expert, last, ends the layer): its routing; else None.
    in_block = [(0, 0), (0, 3), (2, 1), (2, 2), (2, 4)]
    assert [(layer, expert) for layer, expert, routed in reported if routed is not None] == in_block
    assert all(routed == tokens[layer // 2].tolist() for layer, _, routed in reported if routed is not None)
    assert forward_pass.held_bytes() == 0  # an ended pass holds nothing


def test_routing_sends_each_token_to_top_k_distinct_experts():
    for num_experts, top_k, num_tokens in ((8, 2, 3), (8, 2, 5000), (60, 4, 7)):  # per-token sets, multinomial, token by token
        routing = UniformRouting(num_experts, top_k, seed=1)
        counts = routing.tokens_per_expert(5, num_tokens)
        assert counts.shape == (5, num_experts) and (counts.sum(axis=1) == num_tokens * top_k).all()
        assert (counts <= num_tokens).all() and (counts >= 0).all()
        assert (UniformRouting(num_experts, top_k, seed=1).tokens_per_expert(5, num_tokens) == counts).all()
    spread = UniformRouting(8, 2, seed=0).tokens_per_expert(400, 16)
    assert 3.5 < spread.mean() < 4.5 and 1 < (spread > 0).sum(axis=1).mean() < 8  # 16 tokens hit most experts, not all


def sim_run(config, engine: str, requests, stop_everywhere: bool, monkeypatch, **overrides):
    """Replay `requests` on the sim; `stop_everywhere`: the pass stops at every checkpoint."""
    if stop_everywhere:
        monkeypatch.setattr(Scheduler, "may_stop", lambda scheduler, batch: True)
    resources = RunResources(config)
    clock = resources.new_clock()
    recorder = Recorder(clock)
    replay(requests, resources.build_engine(engine_config(config, engine, **overrides), engine, clock, recorder),
           recorder, progress=False)  # fmt: skip
    monkeypatch.undo()
    classes = {r.request_id: r.priority_class for r in requests}
    return (requests_table(requests, recorder, {}, "run", engine), timeline_table(recorder, "run", engine, classes))


def mixed_requests(n: int, seed: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(0.4, n))
    return [Request(f"r{i}", float(arrivals[i]), int(rng.integers(2, 40)), int(rng.integers(1, 12)),
                    "LS" if i % 4 == 1 else "BE", 0 if i % 4 == 1 else 1) for i in range(n)]  # fmt: skip


@pytest.mark.parametrize("engine, granularity, merge, mixed", [
    ("qllm", "expert", False, False), ("qllm", "layer", False, False), ("qllm_slo_slack", "expert", False, False),
    ("fcfs_rtc", "iteration", False, False), ("priority_cb", "iteration", False, False), ("qllm", "expert", True, False),
    ("qllm", "layer", True, False), ("qllm_slo_slack", "expert", True, False), ("qllm", "expert", False, True),
    ("fcfs_cb", "iteration", False, True),
])  # fmt: skip
def test_skipping_idle_checkpoints_changes_no_schedule(engine, granularity, merge, mixed, monkeypatch):
    config = compose_config("executor=sim", "hardware=a100_80gb", "model=mixtral_8x7b_4bit",
                            f"engine=[{engine}]", "slo.LS.ttft_s=0.15")  # tight: slo_slack preempts too  # fmt: skip
    requests = mixed_requests(60, seed=3)
    mixing = {} if engine == "fcfs_rtc" else {"policy__mixed_batches": mixed}  # the others' policies take it
    overrides = {"granularity": granularity, "catch_up_merge": merge, **mixing}
    skipped, skipped_timeline = sim_run(config, engine, requests, False, monkeypatch, **overrides)
    stepped, stepped_timeline = sim_run(config, engine, requests, True, monkeypatch, **overrides)
    columns = ["first_scheduled_s", "first_token_s", "finish_s", "preemptions", "generated_len"]
    pd.testing.assert_frame_equal(skipped[columns], stepped[columns], rtol=0, atol=1e-9)
    assert (skipped["status"] == "finished").all()
    if engine.startswith("qllm"):
        assert skipped["preemptions"].sum() > 0  # the schedule compared includes preemptions
    if granularity != "iteration":
        assert len(skipped_timeline) < len(stepped_timeline)  # and the skips happened
    if mixed:  # prompts rode in decode passes
        assert (skipped_timeline["kind"] == "mixed").sum() > 0
        return
    merged = skipped_timeline[(skipped_timeline["kind"] == "mixed") & skipped_timeline["is_resume"].astype(bool)]
    if engine == "qllm" or not merge:
        assert (len(merged) > 0) == merge  # LS prompts joined the decode passes they preempted
    assert ((merged["num_ls"] > 0) & (merged["num_be"] > 0)).all()


class PreemptDecodesForPrompts:
    """A user's checkpoint policy that preempts for something other than outranking work: a decode
    pass gives way whenever a prompt waits. It declares nothing (`preempts_for`)."""

    def should_preempt(self, state) -> bool:
        return not state.running_is_prefill and any(w.is_prefill for w in state.waiting)


def test_a_checkpoint_policy_that_preempts_for_other_work_is_not_skipped(monkeypatch):
    config = compose_config("executor=sim", "hardware=a100_80gb", "model=mixtral_8x7b_4bit", "engine=[qllm]")
    requests = mixed_requests(40, seed=3)
    policy = {"_target_": f"{__name__}.PreemptDecodesForPrompts"}
    skipped, _ = sim_run(config, "qllm", requests, False, monkeypatch, checkpoint_policy=policy)
    stepped, _ = sim_run(config, "qllm", requests, True, monkeypatch, checkpoint_policy=policy)
    assert stepped["preemptions"].sum() > 0
    columns = ["first_scheduled_s", "first_token_s", "finish_s", "preemptions"]
    pd.testing.assert_frame_equal(skipped[columns], stepped[columns], rtol=0, atol=1e-9)


@pytest.mark.parametrize("merge", [False, True])
def test_kv_and_suspended_state_are_accounted(monkeypatch, merge):
    """A budget run on the sim: reserved and allocated KV and the suspended passes' state are gauged,
    and the budget bounds reserved KV plus suspended state (with catch-up merge, while a catch-up runs
    beside the pass it will join)."""
    budget_mb = 40.0
    config = compose_config("executor=sim", "hardware=a100_80gb", "model=mixtral_8x7b_4bit", "engine=[qllm]")
    requests = mixed_requests(40, seed=5)
    table, timeline = sim_run(config, "qllm", requests, False, monkeypatch, granularity="expert",
                              memory_budget_mb=budget_mb, catch_up_merge=merge, policy__mixed_batches=False)  # fmt: skip
    assert ((timeline["kind"] == "mixed").any()) == merge  # one phase per pass: only a merge mixes
    ends = timeline.dropna(subset=["kv_allocated_bytes"])
    assert (ends["kv_allocated_bytes"] > 0).any() and (ends["suspended_bytes"] > 0).any()
    assert (ends["kv_reserved_bytes"] + ends["suspended_bytes"] <= budget_mb * 2**20).all()
    assert table["status"].isin(["finished", "rejected"]).all() and (table["status"] == "finished").any()
