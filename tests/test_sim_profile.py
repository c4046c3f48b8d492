"""The profiled cost model: a profile round-trips, each stage's fit recovers the costs that made the
samples (between and beyond the measured shapes, through noise spikes), a profile of another model
or another CPU is refused, the idle delay follows the probes' medians, and `qllm-profile` measures every
stage of the real executor and probes its engine after idle gaps."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from harness.app import compose_config, run_engine
from harness.engines import RunResources
from harness.profiling.profiler import (WARM_STEPS, WARM_TOKENS, ShapeSpace, batch_for, draw_shapes, measure_after_prompts,
                                       measure_idle, measure_in_run, measure_stages, shape_columns, shapes_of_part)  # fmt: skip
from qllm.clock import VirtualClock
from qllm.errors import ConfigurationError
from qllm.sim.cost_model import PassShape
from qllm.machine import cpu_name
from qllm.memory_plan import kv_bytes_per_token
from qllm.real.executor import RealExecutor
from qllm.request import DEFAULT_PRIORITY, Request
from qllm.sim.catch_up import SimRows
from qllm.sim.executor import SimExecutor
from qllm.sim.routing import UniformRouting
from qllm.sim.profiled import FEATURES, PHASES, STAGES, ProfiledCostModel, features, fit, read_profile, resolve, write_profile
from qllm.sim.shape import ModelShape
from tests.helpers import run_cli

HERE = {"cpu": cpu_name()}
TINY_IN_RUN = ("in_run_run.batch_sizes=[4,2]", "in_run_run.num_requests=6", "in_run_run.max_output_len=6")
# Seconds per unit of each feature (FEATURES order); each stage scales its own by (stage number + 1).
TRUE_COSTS = np.array([1e-4, 2e-6, 3e-7, 5e-7, 4e-9, 1e-8, 3e-7, 2e-6])
ENGINE_COSTS = np.array([3e-5, 1e-6, 0, 2e-7, 0, 0, 0, 0])  # the engine's stages: rows and tokens, no attention
KEY_FEATURES = np.isin(FEATURES, ("attention_area", "keys", "longest"))
TOKEN_COSTS = np.where(KEY_FEATURES, 0.0, TRUE_COSTS)  # the stages that hold no attention read no keys
KEYLESS_STAGES = ("router", "combine", "dense_mlp", "pass_end")


@pytest.fixture(scope="module")
def tiny_shape() -> ModelShape:
    return ModelShape.of(RunResources(compose_config()).model_config)


def stage_cost(model: ModelShape, stage: str, batch_size, query_len, key_len, real_tokens) -> np.ndarray:
    costs = ENGINE_COSTS if stage in ("checkpoint", "pass_overhead") else TOKEN_COSTS if stage in KEYLESS_STAGES else TRUE_COSTS
    return features(model, batch_size, query_len, key_len, real_tokens) @ (costs * (STAGES.index(stage) + 1))


def idle_rows(delays: dict[float, list[float]]) -> pd.DataFrame:
    """`idle` samples: for each gap probed, the delays measured after it."""
    gaps = [(gap, seconds) for gap, samples in delays.items() for seconds in samples]
    return pd.DataFrame([{"stage": "idle", **shape_columns("prefill", [16]), "tokens": 0.0, "idle_s": gap,
                          "seconds": seconds} for gap, seconds in gaps])  # fmt: skip


def synthetic_table(model: ModelShape, spikes: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Samples on shapes drawn as qllm-profile draws them, timed by TRUE_COSTS; `spikes`: the share of
    samples taken 10x longer (the core busy with something else)."""
    rng = np.random.default_rng(seed)
    shapes = pd.DataFrame([shape_columns(*shape) for shape in draw_shapes(ShapeSpace(num_shapes=60), rng)])
    rows = [shapes.assign(stage=stage, tokens=0.0) for stage in STAGES]
    table = pd.concat(rows, ignore_index=True)
    table["seconds"] = [float(stage_cost(model, r.stage, r.batch_size, r.query_len, r.key_len, r.real_tokens))
                        for r in table.itertuples()]  # fmt: skip
    tokens = np.r_[1, rng.integers(1, 400, 199)].astype(float)  # a run's decode steps always give 1-token experts
    experts = pd.DataFrame({"stage": "expert", "phase": "any", "batch_size": 0, "query_len": 0, "key_len": 0,
                            "real_tokens": 0, "tokens": tokens, "seconds": 2e-4 + 3e-6 * tokens})  # fmt: skip
    table = pd.concat([table, experts, idle_rows({0.001: [2e-4], 0.1: [1e-3]})], ignore_index=True)
    spiked = rng.random(len(table)) < spikes
    table.loc[spiked, "seconds"] *= 10
    return table


@pytest.mark.parametrize("spikes", [0.0, 0.05])
def test_each_stage_fit_recovers_its_costs_between_and_beyond_the_measured_shapes(tmp_path, tiny_shape, spikes):
    path = tmp_path / "profile.parquet"
    write_profile(synthetic_table(tiny_shape, spikes), path, tiny_shape, {**HERE, "command": "test"})
    table, model, about = read_profile(path)
    assert len(table) == len(synthetic_table(tiny_shape)) and about["command"] == "test" and model["num_layers"] == 4
    costs = ProfiledCostModel(str(path), tiny_shape)
    shapes = [PassShape(4, 1, 300, 4), PassShape(32, 1, 2000, 32), PassShape(3, 100, 100, 170),
              PassShape(64, 64, 64, 4096), PassShape(1, 1000, 1000, 1000)]  # fmt: skip
    for shape in shapes:  # inside the drawn space, and far beyond it (2,000 keys, 64 rows, 4,096 tokens)
        got = costs.stage_costs(shape)
        for stage in STAGES:
            expected = float(stage_cost(tiny_shape, stage, shape.batch_size, shape.query_len, shape.key_len,
                                        shape.num_real_tokens))  # fmt: skip
            assert getattr(got, f"{stage}_s") == pytest.approx(expected, rel=0.02), (shape, stage)
    assert costs.expert_s(np.array([0, 1, 1000])) == pytest.approx([0, 2.03e-4, 3.2e-3], rel=0.02)


def test_a_stage_without_attention_is_priced_alike_at_every_context(tmp_path, tiny_shape):
    """Only the attention reads the cached keys. Where the noise of a few samples draws a slope over the
    keys in another stage (here: samples at longer contexts taken while the core ran up to 30 % slower),
    its fit does not carry it: a tiny_mixtral profile priced a 1-row decode pass's end +0.3 us a key
    where a run's passes took the same at 100 keys and at 700."""
    table = synthetic_table(tiny_shape)
    keyless = table["stage"].isin(KEYLESS_STAGES)
    table.loc[keyless, "seconds"] *= 1 + 0.3 * table.loc[keyless, "key_len"] / table["key_len"].max()
    path = tmp_path / "profile.parquet"
    write_profile(table, path, tiny_shape, HERE)
    costs = ProfiledCostModel(str(path), tiny_shape)
    for rows, query in ((1, 1), (8, 1), (2, 40)):
        short, long = (costs.stage_costs(PassShape(rows, query, keys)) for keys in (query + 50, query + 700))
        for stage in ("router", "combine", "pass_end"):
            assert getattr(long, f"{stage}_s") == getattr(short, f"{stage}_s"), (rows, query, stage)
        assert long.attention_s > 1.5 * short.attention_s  # the attention's keys still count


@pytest.mark.parametrize("prefill_rows", [None, 7])
def test_the_pass_end_follows_a_step_in_its_cost_over_rows(tmp_path, tiny_shape, prefill_rows):
    """The LM head's GEMM changes kernels with its row count, so the end of a pass steps with the rows
    (measured: 3 rows 0.86 ms, 4 rows 1.47 ms); a line through the step priced 1 row 1.3-1.5x. The fit
    follows the step, between the measured row counts and past the last, also where one phase was
    measured on fewer rows than the other (`prefill_rows`)."""

    def lm_head_s(rows):
        return np.where(rows < 4, 4e-4 + 1.5e-4 * rows, 1.3e-3 + 8e-5 * rows)

    table = synthetic_table(tiny_shape)
    if prefill_rows is not None:
        table = table[(table["phase"] != "prefill") | (table["batch_size"] <= prefill_rows)]
    end = table["stage"] == "pass_end"
    table.loc[end, "seconds"] = lm_head_s(table.loc[end, "batch_size"].to_numpy(float)) + 2e-7 * table.loc[end, "real_tokens"]
    path = tmp_path / "profile.parquet"
    write_profile(table, path, tiny_shape, HERE)
    costs = ProfiledCostModel(str(path), tiny_shape)
    for rows in (1, 2, 3, 4, 5, 8, 13, 40):
        for shape in (PassShape(rows, 1, 200), PassShape(rows, 50, 50)):
            expected = float(lm_head_s(np.array(rows, float))) + 2e-7 * shape.num_real_tokens
            assert costs.stage_costs(shape).pass_end_s == pytest.approx(expected, rel=0.05), shape


def test_a_routed_experts_time_follows_a_step_in_its_cost_over_tokens(tmp_path, tiny_shape):
    """An expert's GEMMs change kernels with their rows too (small_mixtral: 1 token 0.44 ms, 2 tokens
    0.49 ms, 3-6 tokens 0.43-0.45 ms); a line through them priced 3-6 tokens, where a decode step's
    experts mostly are, 1.10-1.15x. The fit follows the step, and goes on straight past the tokens
    measured."""

    def expert_s(tokens):
        return np.where(tokens < 3, 4e-4 + 5e-5 * tokens, 3.6e-4 + 2e-5 * tokens)

    rng = np.random.default_rng(1)
    tokens = np.r_[np.repeat(np.arange(1.0, 17.0), 10), np.exp(rng.uniform(np.log(17), np.log(500), 100)).round()]
    experts = pd.DataFrame({"stage": "expert", "phase": "any", "batch_size": 0, "query_len": 0, "key_len": 0,
                            "real_tokens": 0, "tokens": tokens,
                            "seconds": expert_s(tokens) * rng.uniform(0.95, 1.05, len(tokens))})  # fmt: skip
    table = synthetic_table(tiny_shape)
    table = pd.concat([table[table["stage"] != "expert"], experts], ignore_index=True)
    path = tmp_path / "profile.parquet"
    write_profile(table, path, tiny_shape, HERE)
    got = ProfiledCostModel(str(path), tiny_shape).expert_s(np.array([1, 2, 3, 4, 5, 7, 30, 250, 1000]))
    assert got == pytest.approx(expert_s(np.array([1, 2, 3, 4, 5, 7, 30, 250, 1000])), rel=0.03)



@pytest.mark.parametrize("stage", ["attention", "layer"])
def test_attention_that_outgrows_the_caches_is_priced_on_its_bend(tmp_path, tiny_shape, stage):
    """Eager attention materializes its scores, and past the caches each unit of area costs more
    (tiny_gpt_oss: one 400-token prompt 10 ms, five 82 ms); a line through such samples priced its
    prefills +22-27 %. The fit of a stage that holds an attention (its half, or a layer called whole)
    follows the bend in both phases; a linear cost stays linear (the first test)."""

    def bent_s(shape):
        area = shape.batch_size * shape.query_len * shape.key_len
        return float(stage_cost(tiny_shape, stage, shape.batch_size, shape.query_len, shape.key_len,
                                shape.num_real_tokens)) + 3e-8 * max(area - 150_000, 0)  # fmt: skip

    table = synthetic_table(tiny_shape)
    bent = table["stage"] == stage
    table.loc[bent, "seconds"] = [bent_s(PassShape(r.batch_size, r.query_len, r.key_len, r.real_tokens))
                                  for r in table[bent].itertuples()]  # fmt: skip
    path = tmp_path / "profile.parquet"
    write_profile(table, path, tiny_shape, HERE)
    costs = ProfiledCostModel(str(path), tiny_shape)
    for shape in (PassShape(1, 400, 400), PassShape(5, 400, 400), PassShape(2, 50, 50), PassShape(8, 200, 200),
                  PassShape(16, 1, 500), PassShape(4, 512, 512)):  # fmt: skip
        assert getattr(costs.stage_costs(shape), f"{stage}_s") == pytest.approx(bent_s(shape), rel=0.08), shape


def test_reading_a_models_shape_leaves_the_real_models_attention_as_it_was():
    """ModelShape.of and the memory plan's KV probe build the model on the meta device with eager
    attention; a real model whose config they read must keep its own (pass_fidelity timed eager
    attention for a while: 2.5x slower on padded prompts than the sdpa the runs use)."""
    model = RunResources(compose_config()).model
    ModelShape.of(model.config)
    assert model.config._attn_implementation == "sdpa"
    kv_bytes_per_token(model.config, model.dtype)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("lengths, warm_steps", [([12, 10, 14], WARM_STEPS), ([9, 2, 12], 1)])
def test_a_decode_shape_is_timed_after_steps_of_its_whole_batch(lengths, warm_steps):
    """The profile times a decode step as a run meets it, after untimed steps of the same batch (a
    step after other work runs slower), with exactly the shape's cached tokens; a row too short for
    WARM_STEPS steps takes fewer, never a shorter prompt than one token."""
    assert WARM_STEPS >= 3
    executor = RealExecutor(RunResources(compose_config()).model, "layer")
    passes = []
    forward = executor.forward
    executor.forward = lambda rows, *rest: passes.append(len(rows)) or forward(rows, *rest)
    batch = batch_for(executor, "decode", lengths, torch.Generator().manual_seed(0))
    assert [sequence.num_cached_tokens for sequence in batch] == lengths
    assert [sequence.num_new_tokens for sequence in batch] == [1] * len(lengths)
    assert passes[-warm_steps:] == [len(lengths)] * warm_steps and len(passes) == 1 + warm_steps  # one prefill of <= 4 rows


def test_the_idle_delay_follows_the_medians_measured_at_each_gap(tmp_path, tiny_shape):
    """Between the gaps probed, the median delays interpolated in the log of the gap (a spike in one
    sample moves nothing); below the shortest, in proportion to the gap; past the longest, flat; a
    median below zero (noise around no delay) is no delay."""
    table = synthetic_table(tiny_shape)
    probed = {0.001: [2e-4, 3e-4, 1e-4], 0.01: [1.2e-3, 1e-3, 5e-2], 0.1: [-1e-4, -2e-4, 1e-4]}
    table = pd.concat([table[table["stage"] != "idle"], idle_rows(probed)], ignore_index=True)
    path = tmp_path / "profile.parquet"
    write_profile(table, path, tiny_shape, HERE)
    costs = ProfiledCostModel(str(path), tiny_shape)
    expected = {0.0: 0.0, 0.0005: 1e-4, 0.001: 2e-4, np.sqrt(0.001 * 0.01): 7e-4, 0.01: 1.2e-3, 0.1: 0.0, 5.0: 0.0}
    for gap, delay in expected.items():
        assert costs.idle_s(gap) == pytest.approx(delay, abs=1e-12), gap


def test_the_wake_up_window_is_the_busy_median_plus_what_idling_added(tmp_path, tiny_shape):
    """How long after its arrival a request is batched: straight after work (gap 0) the median of those
    probes; after idling, that plus the median extra at each gap probed (a spike moves nothing, less
    than straight after work is no extra), interpolated as the idle delay; nothing without
    `wake_up_delay`, nor in a profile measured before these probes."""
    table = synthetic_table(tiny_shape)
    probed = {0.0: [1e-4, 2e-4, 1e-4, 3e-4], 0.01: [3e-4, 4e-4, 9e-2], 0.1: [6e-4, 5e-4, 7e-4], 1.0: [0.0, 1e-4, 5e-5]}
    wake = idle_rows(probed).assign(stage="wake")
    path = tmp_path / "profile.parquet"
    write_profile(pd.concat([table, wake], ignore_index=True), path, tiny_shape, HERE)
    costs = ProfiledCostModel(str(path), tiny_shape)
    busy = 1.5e-4
    expected = {0.0: busy, 0.005: busy + 1.25e-4, 0.01: busy + 2.5e-4, np.sqrt(0.01 * 0.1): busy + 3.5e-4, 0.1: busy + 4.5e-4,
                1.0: busy, 30.0: busy}  # fmt: skip
    for gap, window in expected.items():
        assert costs.wake_s(gap) == pytest.approx(window, abs=1e-12), gap
    assert ProfiledCostModel(str(path), tiny_shape, wake_up_delay=False).wake_s(0.1) == 0.0
    write_profile(table, path, tiny_shape, HERE)
    assert ProfiledCostModel(str(path), tiny_shape).wake_s(0.1) == 0.0


def test_requests_arriving_while_an_idle_engine_wakes_up_share_its_batch(tmp_path, tiny_shape):
    """After idling, the simulated engine looks at its queue the profile's wake-up window after the
    arrival (here 1 ms after 0.1 s idle and more, 0.1 ms straight after work): a request 0.6 ms behind
    joins the first one's prefill, one 1.5 ms behind does not; a lone request's first token comes
    the idle delay plus the busy window after its arrival, on top of its pass. A profile without
    the window, or `wake_up_delay=false`, batches neither: a pass formed the moment it arrives."""
    table = synthetic_table(tiny_shape)
    idle = idle_rows({0.1: [2e-3]})
    wake = idle_rows({0.0: [1e-4], 0.1: [1e-3]}).assign(stage="wake")
    requests = [Request(name, arrival, 20, 2, "BE", 1) for name, arrival in
                (("r0", 0.5), ("r1", 0.5006), ("r2", 1.5), ("r3", 1.5015), ("alone", 2.5))]  # fmt: skip

    def run(profile_rows, *overrides):
        path = tmp_path / "profile.parquet"
        write_profile(pd.concat([table[table["stage"] != "idle"], idle, *profile_rows], ignore_index=True), path, tiny_shape, HERE)
        cfg = compose_config("engine=[fcfs_cb]", "executor=sim", "hardware=profiled", f"hardware.path={path}",
                             "progress=false", *overrides)  # fmt: skip
        (name, engine_cfg), = cfg.engine.items()
        return run_engine(name, engine_cfg, RunResources(cfg), requests, cfg, {"run_id": "0"})["requests"].set_index("request_id")

    woken = run([wake])
    scheduled = woken["first_scheduled_s"]
    assert scheduled["r0"] == scheduled["r1"] == pytest.approx(0.501, abs=1e-12)  # one batch
    assert scheduled["r2"] == pytest.approx(1.501, abs=1e-12) and scheduled["r3"] > scheduled["r2"]
    at_once = run([])
    assert at_once.loc["r0", "first_scheduled_s"] == 0.5 and at_once.loc["r1", "first_scheduled_s"] > 0.5006
    ttft = woken["ttft_s"]["alone"] - at_once["ttft_s"]["alone"]
    assert ttft == pytest.approx(1e-4, abs=1e-12)  # the same delay in all, and the busy window
    off = run([wake], "hardware.wake_up_delay=false")
    assert off.loc["r0", "first_scheduled_s"] == 0.5 and off.loc["r1", "first_scheduled_s"] > 0.5006


def test_the_after_prompts_delay_is_the_probes_median_share_of_the_decode_pass(tmp_path, tiny_shape):
    """Per prompt size probed and step after the prompts, the median over its probes of each delay
    over its own decode step's price (a spike in one sample moves nothing, a median below zero is no
    delay, and no step's share exceeds the one before's); between sizes interpolated in the log of
    the prompt tokens, below the fewest in proportion to them, past the most flat; of the decode pass
    it delays; none past the steps probed. A profile without probes prices none, and so does a model
    without `after_prompts_delay`."""
    table = synthetic_table(tiny_shape)
    path = tmp_path / "profile.parquet"
    write_profile(table, path, tiny_shape, HERE)
    without = ProfiledCostModel(str(path), tiny_shape)
    assert without.after_prompts_s(1024, 1, 0.02) == 0.0
    probed = {  # prompt tokens -> per probe, its shares at steps 1, 2, 3 after the prompts
        64: [[0.1, 0.0, 0.05], [0.2, 0.05, 0.0], [0.15, -0.05, 0.3]],
        1024: [[0.8, 0.4, 0.1], [1.0, 0.5, 0.2], [30.0, 0.3, 0.1]],
        2048: [[-0.1, 0.0, 0.0], [-0.05, 0.0, 0.0], [0.02, 0.0, 0.0]],
    }
    contexts = [[40, 30], [300], [12, 12, 12, 700]]  # decode steps of other prices: a share of each
    rows = []
    for tokens, probes in probed.items():
        for shares, lengths in zip(probes, contexts):
            step = shape_columns("decode", lengths)
            step_s = without.decode_pass_s(PassShape(step["batch_size"], 1, step["key_len"], step["real_tokens"]))
            rows += [{"stage": "after_prompts", **step, "tokens": float(tokens), "step_after": k, "seconds": share * step_s}
                     for k, share in enumerate(shares, start=1)]  # fmt: skip
    write_profile(pd.concat([table, pd.DataFrame(rows)], ignore_index=True), path, tiny_shape, HERE)
    costs = ProfiledCostModel(str(path), tiny_shape)
    expected = {  # (prompt tokens, step after) -> share
        (0, 1): 0.0, (32, 1): 0.075, (64, 1): 0.15, (256, 1): 0.575, (1024, 1): 1.0, (2048, 1): 0.0, (9000, 1): 0.0,
        (64, 2): 0.0, (64, 3): 0.0, (1024, 2): 0.4, (256, 2): 0.2, (1024, 3): 0.1, (1024, 4): 0.0, (1024, 0): 0.0,
    }  # fmt: skip
    for (tokens, step), share in expected.items():
        assert costs.after_prompts_s(tokens, step, 0.02) == pytest.approx(share * 0.02, abs=1e-12), (tokens, step)
    assert ProfiledCostModel(str(path), tiny_shape, after_prompts_delay=False).after_prompts_s(1024, 1, 0.02) == 0.0


def test_an_after_prompts_probe_times_steady_steps_then_the_steps_after_a_prefill(monkeypatch):
    """Per probe: the decode batch (its caches filled, WARM_STEPS steps), `steps` steady steps, a
    prefill of the probe's prompt tokens in rows of at most max_prompt_len, `steps` more; a row for
    each of those, with the decode batch's shape, the prompt tokens and the step's number."""
    model = RunResources(compose_config()).model
    passes = []
    forward = RealExecutor.forward
    monkeypatch.setattr(RealExecutor, "forward", lambda self, rows, *rest: passes.append(len(rows)) or forward(self, rows, *rest))
    table = measure_after_prompts(model, [(40, [9, 12]), (3, [5])], 16, 2, torch.Generator().manual_seed(0))
    assert (table["stage"] == "after_prompts").all() and np.isfinite(table["seconds"]).all()
    assert table[["tokens", "step_after", "batch_size", "key_len", "query_len"]].values.tolist() == \
        [[40, 1, 2, 13, 1], [40, 2, 2, 13, 1], [3, 1, 1, 6, 1], [3, 2, 1, 6, 1]]  # fmt: skip
    first = passes[: 1 + WARM_STEPS + 5]  # the batch's prefill and warm steps, 2 steady, the prompts, 2 after
    assert first == [2] * (1 + WARM_STEPS) + [2, 2, 3, 2, 2]
    assert passes[len(first):] == [1] * (1 + 4) + [1, 1, 1, 1, 1]  # 4 warm steps: its row holds 4 cached tokens


def test_the_passes_of_a_run_are_timed_in_it_with_their_shapes_and_steps_after_prompts(monkeypatch):
    """One row per pass of each run at each granularity (one phase each): the shape the real executor
    was given, its seconds in the run (its quanta's, the gaps between them left out), and for a
    decode pass its step after the last prompts and their tokens, counted from 1 again after each
    pass that fed prompts."""
    cfg = compose_config("engine=[qllm_one_phase]", "executor=real")
    resources = RunResources(cfg)
    (name, engine_cfg), = cfg.engine.items()
    ran, starts, recorders = [], [], []
    forward = RealExecutor.forward

    def spy(self, batch, *rest, **named):
        decode = all(s.num_cached_tokens for s in batch)
        keys = max(s.num_cached_tokens + s.num_new_tokens for s in batch)
        ran.append(["decode" if decode else "prefill", len(batch), keys, sum(s.num_new_tokens for s in batch)])
        return forward(self, batch, *rest, **named)

    def build(clock, recorder, granularity, max_batch_size):
        chosen = OmegaConf.merge(engine_cfg, {"granularity": granularity, "policy": {"max_batch_size": max_batch_size}})
        engine = resources.build_engine(chosen, name, clock, recorder)
        starts.append(len(ran))  # the engine's warm-up passes are not the run's
        recorders.append(recorder)
        return engine

    monkeypatch.setattr(RealExecutor, "forward", spy)
    requests = [Request(f"r{i}", 0.0, prompt, output, "BE", DEFAULT_PRIORITY["BE"])
                for i, (prompt, output) in enumerate([(5, 3), (9, 2), (4, 4)])]  # fmt: skip
    table = measure_in_run(build, [(2, requests)], ["iteration", "layer"])
    assert list(table["stage"].unique()) == ["in_run_iteration", "in_run_layer"]
    for index, (granularity, rows) in enumerate(table.groupby("stage", sort=False)):
        quanta = recorders[index].quanta
        ends = [i for i, quantum in enumerate(quanta) if quantum.layer is None]
        per_pass = [sum(q.t_end_s - q.t_start_s for q in quanta[start + 1 : end + 1]) for start, end in zip([-1, *ends], ends)]
        np.testing.assert_allclose(rows["seconds"], per_pass)
        assert len(quanta) == len(rows) * (1 if granularity == "in_run_iteration" else resources.model.config.num_hidden_layers + 1)
        assert rows[["phase", "batch_size", "key_len", "real_tokens"]].values.tolist() == ran[starts[index] : starts[index] + len(rows)]
        decode_rows = rows["phase"] == "decode"
        assert rows.loc[~decode_rows, "step_after"].eq(0).all() and rows.loc[~decode_rows, "tokens"].eq(0).all()
        steps, tokens = [], []
        for row in rows.itertuples():  # the count the rows should carry
            steps.append(0 if row.phase == "prefill" else steps[-1] + 1)
            tokens.append(row.real_tokens if row.phase == "prefill" else tokens[-1])
        assert rows["step_after"].tolist() == steps
        assert rows.loc[decode_rows, "tokens"].tolist() == [t for t, d in zip(tokens, decode_rows) if d]
        assert rows["step_after"].max() >= 2 and rows["phase"].eq("prefill").sum() >= 2


def test_the_profiles_engine_runs_each_take_their_batch_limit_and_requests_for_it():
    """A run per batch limit, with up to requests_per_row x B requests (a run of few rows needs few to
    make many passes), drawn apart for each run; a part runs every batch limit with every parts-th of
    its requests, and at least B of them (its passes reach B rows)."""
    from harness.profiling.profile_app import in_run_requests

    cfg = OmegaConf.create({"batch_sizes": [32, 2, 8], "num_requests": 64, "requests_per_row": 4, "max_output_len": 16})
    runs = in_run_requests(cfg, ShapeSpace(max_prompt_len=40), seed=5)
    assert [(b, len(requests)) for b, requests in runs] == [(32, 64), (2, 8), (8, 32)]
    requests = [r for _, run in runs for r in run]
    assert all(r.arrival_s == 0 and 1 <= r.prompt_len <= 40 and 1 <= r.output_len <= 16 for r in requests)
    assert len({r.request_id for r in requests}) == len(requests) and len({r.prompt_len for r in requests}) > 20
    halves = [in_run_requests(cfg, ShapeSpace(max_prompt_len=40), seed=5, part=part, parts=2) for part in (0, 1)]
    assert [[(b, len(requests)) for b, requests in half] for half in halves] == [[(32, 32), (2, 4), (8, 16)]] * 2
    for (_, first), (_, second), (_, whole) in zip(*halves, runs):  # the two parts share each run's requests
        assert {r.request_id: r for r in first + second} == {r.request_id: r for r in whole}
    few = OmegaConf.merge(cfg, {"num_requests": 40})
    assert [(b, len(requests)) for b, requests in in_run_requests(few, ShapeSpace(), seed=5, part=1, parts=2)] == [(32, 32), (2, 4), (8, 16)]


def test_the_level_is_what_passes_in_runs_took_over_what_the_simulator_prices_them_at_per_phase(tmp_path, tiny_shape):
    """Passes timed in runs at iteration granularity, prompts of 1 row at 1.2x what the simulated
    executor prices them at, of 2 rows at 1.4x; decode passes (their delay after prompts in the
    price) of 1 row at 0.9x, of 2 rows at 2.5x, of 3-4 rows at 0.7x; one prompt at 40x (a spike: the
    machine's, left out); at expert granularity prompts at 0.8x and decode passes at 1.1x; at layer
    granularity decode passes only, at 1.3x: an executor at each prices every stage of the model's
    work and every expert at its phase's level, the passes' summed time over their summed price
    whatever their rows (a phase without passes at that of all; a mixed pass's experts at that of the
    rows whose MLP half it runs), the engine's own stages as measured (already in runs); without
    `in_run_level`, the stages as timed."""
    table = synthetic_table(tiny_shape)
    probes = [{"stage": "after_prompts", **shape_columns("decode", [30, 40]), "tokens": 256.0, "step_after": k,
               "seconds": 1e-3 / k} for k in (1, 2, 3)]  # fmt: skip
    table = pd.concat([table, pd.DataFrame(probes)], ignore_index=True)
    path = tmp_path / "profile.parquet"
    write_profile(table, path, tiny_shape, HERE)
    config = RunResources(compose_config()).model_config

    def executor(granularity, **options):
        return SimExecutor(config, VirtualClock(), functools.partial(ProfiledCostModel, str(path), **{"in_run_level": True, **options}), granularity)

    decode = [*[("decode", [21], 256, 1)] * 4, *[("decode", [40], 0, 12)] * 4, *[("decode", [21, 8], 256, 2)] * 3,
              *[("decode", [100, 300, 5], 64, 3)] * 4, *[("decode", [22, 9, 30, 41], 256, 2)] * 4]  # in a profile's order
    prompts = [("prefill", [400], 0, 0), ("prefill", [20, 7], 0, 0)]
    spike = ("prefill", [100], 0, 0, 40.0)  # at this factor, not its rows'
    passes = {"iteration": [*decode, *prompts, *[("prefill", [100], 0, 0), ("prefill", [30, 9], 0, 0)] * 7, spike],
              "layer": decode, "expert": [*decode, *prompts]}
    factors = {"iteration": {("prefill", 1): 1.2, ("prefill", 2): 1.4, 1: 0.9, 2: 2.5, 3: 0.7, 4: 0.7},
               "layer": {1: 1.3, 2: 1.3, 3: 1.3, 4: 1.3},
               "expert": {("prefill", 1): 0.8, ("prefill", 2): 0.8, 1: 1.1, 2: 1.1, 3: 1.1, 4: 1.1}}  # fmt: skip
    rows, sums = [], {}  # sums: (granularity, phase) -> [seconds, price] of the passes that count
    for granularity, factor in factors.items():
        alone = executor(granularity, in_run_level=False)  # the stages as timed: the table holds no runs yet
        routing = UniformRouting(alone.model.num_experts, alone.model.top_k, seed=0)  # drawn apart, pass after pass
        assert alone.costs.after_prompts_s(256, 1, 1.0) > 0.05  # the delays weigh in the price
        for phase, lengths, tokens, step, *spiked in passes[granularity]:
            shape = shape_columns(phase, lengths)
            pass_shape = PassShape(shape["batch_size"], shape["query_len"], shape["key_len"], shape["real_tokens"])
            plan, costs = alone.plan(pass_shape, routing), alone.stage_costs(pass_shape)
            price = plan.total_s - costs.pass_overhead_s - plan.num_checkpoints * costs.checkpoint_s
            price += alone.costs.after_prompts_s(tokens, step, plan.total_s) if step else 0.0
            seconds = (spiked or [factor[len(lengths) if phase == "decode" else (phase, len(lengths))]])[0] * price
            rows.append({"stage": f"in_run_{granularity}", **shape, "tokens": float(tokens), "step_after": step, "seconds": seconds})
            if not spiked:
                summed = sums.setdefault((granularity, phase), [0.0, 0.0])
                summed[0], summed[1] = summed[0] + seconds, summed[1] + price
    write_profile(pd.concat([table, pd.DataFrame(rows)], ignore_index=True), path, tiny_shape, HERE)
    base = ProfiledCostModel(str(path), tiny_shape)
    tokens = np.array([0, 1, 7, 300])
    expected = {key: seconds / price for key, (seconds, price) in sums.items()}
    expected["layer", "prefill"] = 1.3  # no prompts: the level of all its passes
    assert 0.7 < expected["iteration", "decode"] < 2.5 and 1.2 < expected["iteration", "prefill"] < 1.4  # summed over the rows
    for granularity in factors:
        leveled = executor(granularity)
        prefill, decode = expected[granularity, "prefill"], expected[granularity, "decode"]
        assert (leveled.level.prefill, leveled.level.decode) == (pytest.approx(prefill, rel=1e-9), pytest.approx(decode, rel=1e-9))
        for shape, level in ((PassShape(3, 1, 50, 3), decode), (PassShape(2, 30, 30, 45), prefill),
                             (PassShape(32, 1, 41, 32), decode), (PassShape(1, 1, 1, 1), prefill)):  # fmt: skip
            scaled, timed = dataclasses.asdict(leveled.stage_costs(shape)), dataclasses.asdict(base.stage_costs(shape))
            for stage, seconds in timed.items():
                own = stage in ("checkpoint_s", "pass_overhead_s") or seconds is None
                assert scaled[stage] == (seconds if own else pytest.approx(level * seconds, rel=1e-9)), stage
            np.testing.assert_allclose(leveled.experts_s(tokens, shape), level * base.expert_s(tokens), rtol=1e-12)
    mixed = executor("expert")
    decode_rows = SimRows((), (1, 1, 1), PassShape(3, 1, 50, 3), 0)
    for prompt, level in ((SimRows((), (30,), PassShape(1, 30, 30, 30), 0), 0.8), (SimRows((), (2,), PassShape(1, 2, 2, 2), 0), 1.1)):
        plan = mixed.groups_plan([decode_rows, prompt])  # the MLP half of the prompt's 30 tokens, of the 3 decode rows
        np.testing.assert_allclose(plan.expert_s, level * base.expert_s(plan.routed_tokens), rtol=1e-12)
    assert executor("iteration", in_run_level=False).stage_costs(PassShape(3, 1, 50, 3)) == base.stage_costs(PassShape(3, 1, 50, 3))


def test_the_level_is_refused_in_one_line_for_a_profile_without_engine_runs(tmp_path, tiny_shape):
    """A profile measured without engine runs (in_run_run.batch_sizes=[]): asked for the level, the
    simulator says how to measure them rather than pricing the stages as timed unasked."""
    path = tmp_path / "profile.parquet"
    write_profile(synthetic_table(tiny_shape), path, tiny_shape, HERE)
    assert ProfiledCostModel(str(path), tiny_shape).in_run_passes("layer") == []
    with pytest.raises(ConfigurationError, match=r"no passes of engine runs.*'in_run_run.batch_sizes=\[32,16,8,4,2,1\]'"):
        ProfiledCostModel(str(path), tiny_shape, in_run_level=True)


def test_an_idle_probe_follows_the_engines_idle_gap_and_its_reference_follows_work():
    """Per probe: a request after WARM_TOKENS steps of another (the reference), then the same request
    arriving after the engine idled for the probe's gap; an `idle` row each, with its gap and prompt,
    and two `wake` rows: how long after its arrival each of the two was put into a batch (gap 0: the
    reference)."""
    cfg = compose_config("engine=[qllm]", "executor=real")
    resources = RunResources(cfg)
    (name, engine_cfg), = cfg.engine.items()
    recorders = []

    def build(clock, recorder):
        recorders.append(recorder)
        return resources.build_engine(engine_cfg, name, clock, recorder)

    gaps, prompts = [0.02, 0.001], [5, 9]
    table = measure_idle(build, gaps, prompts)
    idle, wake = table[table["stage"] == "idle"], table[table["stage"] == "wake"]
    assert idle[["idle_s", "real_tokens"]].values.tolist() == [[0.02, 5], [0.001, 9]] and len(table) == 6
    assert np.isfinite(idle["seconds"]).all()
    recorder = recorders[0]
    batched = [recorder.requests[f"{name}{probe}"].first_scheduled_s - arrival
               for probe, gap in enumerate(gaps) for name, arrival in (("idle", gap), ("busy", 0.0))]  # fmt: skip
    assert wake[["idle_s", "real_tokens"]].values.tolist() == [[0.02, 5], [0.0, 5], [0.001, 9], [0.0, 9]]
    np.testing.assert_allclose(wake["seconds"], batched, rtol=1e-12)
    assert (wake["seconds"] > 0).all()
    runs = [(request, list(quanta)) for request, quanta in itertools.groupby(recorder.quanta, lambda q: q.request_ids[0])]
    assert [request for request, _ in runs] == ["warm0", "busy0", "idle0", "warm1", "busy1", "idle1"]
    assert len(recorder.requests["warm0"].token_s) == WARM_TOKENS
    idle_starts = [quanta[0].t_start_s for request, quanta in runs if request.startswith("idle")]  # on its replay's clock
    assert idle_starts[0] >= gaps[0] and idle_starts[1] >= gaps[1]


def test_a_profile_without_idle_probes_is_refused(tmp_path, tiny_shape):
    table = synthetic_table(tiny_shape)
    path = tmp_path / "profile.parquet"
    write_profile(table[table["stage"] != "idle"], path, tiny_shape, HERE)
    with pytest.raises(ConfigurationError, match=r"lacks stages \['idle'\].*qllm-profile"):
        ProfiledCostModel(str(path), tiny_shape)


def test_shapes_that_never_run_a_third_expert_are_refused_in_one_line():
    """A block's first and last quanta hold the router and the combine beside an expert; with no expert
    timed alone between them (one-token passes of a top-2 model) they cannot be told apart."""
    model = RunResources(compose_config("model=tiny_mixtral", "executor=real")).model
    space = ShapeSpace(num_shapes=4, max_batch_size=1, max_prompt_len=1, max_batch_tokens=1, max_context_len=2)
    with pytest.raises(ConfigurationError, match=r"at most two experts each.*shapes.num_shapes"):
        measure_stages(model, space, 0)


def test_what_is_set_against_the_stages_is_measured_between_slices_of_them(monkeypatch):
    """The level sets the passes of runs against the stages' price: each run is measured between two
    slices of the shapes, each slice holding shapes of both phases, so that the runs span the seconds the
    stages were timed in (measured after them all, a level carried the machine's speed in other seconds);
    the runs' rows join the table."""
    import harness.profiling.profiler as profiler

    model = RunResources(compose_config("model=tiny_mixtral", "model.config.num_hidden_layers=2", "executor=real")).model
    space = ShapeSpace(num_shapes=12, max_batch_size=4, max_prompt_len=16, max_batch_tokens=64, max_context_len=24)
    timed, timed_before = [], []  # the phase of each shape timed; those timed before each run
    columns = profiler.shape_columns
    monkeypatch.setattr(profiler, "shape_columns", lambda phase, lengths: timed.append(phase) or columns(phase, lengths))

    def run(index):
        def measure():
            timed_before.append(list(timed))
            return pd.DataFrame([{"stage": f"in_run_{index}", "phase": "decode", "seconds": 1.0}])
        return measure

    table = measure_stages(model, space, 0, between=[run(0), run(1)])
    assert {"prefill", "decode"} <= set(timed_before[0])  # the first slice: both phases
    assert 0 < len(timed_before[0]) < len(timed_before[1]) < len(timed)  # a slice before each run and after the last
    assert sorted(timed) == sorted(phase for phase, _ in draw_shapes(space, np.random.default_rng(0)))  # each shape once
    assert table["stage"].isin(["in_run_0", "in_run_1"]).sum() == 2 and table["stage"].eq("attention").any()


def test_engine_stages_never_grow_with_the_attention(tmp_path, tiny_shape):
    """The engine's work between quanta is fitted on rows and tokens only: a decode pass over long
    contexts costs the engine what a short one does."""
    path = tmp_path / "profile.parquet"
    write_profile(synthetic_table(tiny_shape), path, tiny_shape, HERE)
    costs = ProfiledCostModel(str(path), tiny_shape)
    short, long = (costs.stage_costs(PassShape(8, 1, keys, 8)) for keys in (16, 4000))
    assert short.checkpoint_s == long.checkpoint_s and short.pass_overhead_s == long.pass_overhead_s
    assert long.attention_s > short.attention_s


def test_a_profile_of_another_model_is_refused(tmp_path, tiny_shape):
    path = tmp_path / "profile.parquet"
    write_profile(synthetic_table(tiny_shape), path, tiny_shape, HERE)
    wider = ModelShape.of(RunResources(compose_config("model.config.hidden_size=128")).model_config)
    with pytest.raises(ValueError, match="another model.*hidden_size"):
        ProfiledCostModel(str(path), wider)


def test_a_profile_of_another_cpu_is_refused_unless_allowed(tmp_path, tiny_shape):
    path = tmp_path / "profile.parquet"
    write_profile(synthetic_table(tiny_shape), path, tiny_shape, {"cpu": "Some Other CPU 9000"})
    with pytest.raises(ConfigurationError) as refused:
        ProfiledCostModel(str(path), tiny_shape)
    message = str(refused.value)
    assert "\n" not in message and "Some Other CPU 9000" in message and cpu_name() in message
    assert "qllm-profile" in message and "allow_foreign_profile" in message
    assert ProfiledCostModel(str(path), tiny_shape, allow_foreign_profile=True).stage_costs(PassShape(2, 1, 9)).layer_s > 0


def test_qllm_bench_refuses_a_foreign_profile_in_one_line(tmp_path, tiny_shape):
    path = tmp_path / "foreign.parquet"
    write_profile(synthetic_table(tiny_shape), path, tiny_shape, {"cpu": "Some Other CPU 9000"})
    args = ("executor=sim", f"hardware.path={path}", "engine=[qllm]", "trace.num_requests=4", "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    refused = run_cli(*args, expect_ok=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Some Other CPU 9000" in lines[0] and "qllm-profile" in lines[0]
    run_cli(*args, "hardware.allow_foreign_profile=true")


def test_the_shipped_profile_says_which_machine_made_it(tiny_shape):
    _, model, about = read_profile(resolve(compose_config("executor=sim").hardware.path))
    assert model == json.loads(json.dumps(dataclasses.asdict(tiny_shape)))
    for key in ("cpu", "cores", "torch_threads", "torch", "transformers", "command"):
        assert about.get(key), key


def test_qllm_profile_measures_every_stage_of_the_real_executor(tmp_path):
    out = tmp_path / "tiny.parquet"
    run_cli("model.config.num_hidden_layers=2", f"out={out}", "shapes.num_shapes=12", "shapes.max_batch_size=4",
            "shapes.max_prompt_len=16", "shapes.max_context_len=24", "engine_run.num_requests=24", "idle_run.repeats=1",
            "after_prompts_run.repeats=1", "shapes.max_batch_tokens=512", *TINY_IN_RUN, module="harness.profiling.profile_app")  # fmt: skip
    table, model, about = read_profile(out)
    measured = set(zip(table["stage"], table["phase"]))
    assert {(s, p) for s in STAGES if s != "dense_mlp" for p in PHASES} <= measured and ("expert", "any") in measured
    assert sorted(table.loc[table["stage"] == "idle", "idle_s"]) == [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    after = table[table["stage"] == "after_prompts"]  # each size once (at most a pass's tokens), 8 steps after each
    assert sorted(after["tokens"].unique()) == [16, 64, 256, 512] and len(after) == 4 * 8
    assert sorted(after["step_after"].unique()) == list(range(1, 9))
    in_run = table[table["stage"].str.startswith("in_run_")]  # two runs of six requests at each granularity
    assert set(in_run["stage"]) == {"in_run_iteration", "in_run_layer", "in_run_expert"}
    assert set(in_run["phase"]) == {"prefill", "decode"} and (in_run["seconds"] > 0).all()
    assert in_run.loc[in_run["phase"] == "prefill", "query_len"].max() <= 16 and in_run["step_after"].max() >= 1
    timed = table[table["stage"].isin(["attention", "layer", "pass_end", "expert", "checkpoint", "pass_overhead"])]
    assert (timed["seconds"] > 0).all() and model["num_layers"] == 2  # (router and combine are differences of two
    # timed quanta: noise can make one negative; the fit weighs them as typical samples)
    assert about["cpu"] == cpu_name() and about["torch_threads"] == 1 and about["cores"] >= 1
    drawn = table[table["stage"].isin(["attention", "layer", "pass_start", "pass_end"])]  # the drawn shapes' own stages
    assert drawn["batch_size"].max() <= 4 and drawn.loc[drawn["phase"] == "prefill", "query_len"].max() <= 16
    shape = ModelShape.of(RunResources(compose_config("model.config.num_hidden_layers=2")).model_config)
    assert ProfiledCostModel(str(out), shape).stage_costs(PassShape(2, 1, 12)).layer_s > 0
    assert len(FEATURES) == len(TRUE_COSTS)


def test_a_stage_fit_predicts_the_measured_sum_under_multiplicative_noise():
    """Noise that is a share of each sample (lognormal, sigma 0.3): the fitted stage's predicted sum
    over the samples is their measured sum, what a run's time is made of (a fit of the ratios
    alone falls several percent short of it)."""
    rng = np.random.default_rng(1)
    rows = rng.integers(1, 33, 400).astype(float)
    x = np.stack([np.ones_like(rows), rows], axis=1)
    seconds = (2e-4 + 3e-5 * rows) * rng.lognormal(0.0, 0.3, rows.size)
    assert (x @ fit(x, seconds)).sum() == pytest.approx(seconds.sum(), rel=5e-3)


TINY_PROFILE = ("model.config.num_hidden_layers=2", "shapes.num_shapes=12", "shapes.max_batch_size=4",
                "shapes.max_prompt_len=16", "shapes.max_context_len=24", "engine_run.num_requests=24", "idle_run.repeats=1",
                "after_prompts_run.repeats=1", *TINY_IN_RUN)  # fmt: skip


def test_a_profile_measured_in_parts_merges_into_the_shapes_of_one(tmp_path):
    """`part=i parts=n` measures every n-th drawn shape of each phase from i, and every n-th idle probe:
    the parts are disjoint, each holds both phases, and together they are the shapes and probes a
    one-part profile measures; merged, they make one profile of every sample."""
    from harness.profiling.profile_app import profile_in_process
    from qllm.sim.profiled import merge_profiles

    def shapes_of(table):
        drawn = table[table["stage"] == "pass_end"]  # one sample per drawn shape
        return sorted(map(tuple, drawn[["phase", "batch_size", "query_len", "key_len", "real_tokens"]].to_numpy().tolist()))

    paths = {name: tmp_path / f"{name}.parquet" for name in ("whole", "part0", "part1", "merged")}
    profile_in_process("tiny_mixtral", paths["whole"], list(TINY_PROFILE))
    for part in (0, 1):
        profile_in_process("tiny_mixtral", paths[f"part{part}"], [*TINY_PROFILE, f"part={part}", "parts=2"])
    merge_profiles([paths["part0"], paths["part1"]], paths["merged"])
    (whole, _, _), (part0, _, about0), (part1, _, _), (merged, model, about) = (read_profile(paths[n]) for n in paths)
    assert len(shapes_of(part0)) + len(shapes_of(part1)) == 12 and shapes_of(part0) != shapes_of(part1)
    assert shapes_of(merged) == shapes_of(whole) == sorted(shapes_of(part0) + shapes_of(part1))
    assert {shape[0] for shape in shapes_of(part0)} == {shape[0] for shape in shapes_of(part1)} == {"prefill", "decode"}

    def probes_of(table):
        return sorted(table.loc[table["stage"] == "idle", "idle_s"])

    assert probes_of(merged) == probes_of(whole) == sorted(probes_of(part0) + probes_of(part1)) and len(probes_of(whole)) == 6
    assert len(probes_of(part0)) == len(probes_of(part1)) == 3
    after = [sorted(t.loc[t["stage"] == "after_prompts", "tokens"]) for t in (whole, part0, part1, merged)]
    assert after[3] == after[0] == sorted(after[1] + after[2]) and len(after[0]) == 5 * 8 and after[1] and after[2]
    in_run = [t["stage"].str.startswith("in_run_").sum() for t in (whole, part0, part1, merged)]
    assert in_run[3] == in_run[1] + in_run[2] and in_run[1] and in_run[2]
    for table in (part0, part1):  # each part runs every batch limit (in_run_run.batch_sizes=[4,2]) with its share of requests
        passes = table[table["stage"] == "in_run_iteration"]
        assert passes["batch_size"].max() == 4 and (passes["batch_size"] == 2).any()
    assert len(merged) == len(part0) + len(part1) and about0["part"] == "0 of 2"
    assert [p["part"] for p in about["parts"]] == ["0 of 2", "1 of 2"] and about["cpu"] == cpu_name()
    shape = ModelShape.of(RunResources(compose_config("model.config.num_hidden_layers=2")).model_config)
    assert ProfiledCostModel(str(paths["merged"]), shape).stage_costs(PassShape(2, 1, 12)).layer_s > 0
    other = tmp_path / "other.parquet"
    write_profile(part0, other, {**model, "hidden_size": 128}, about0)
    with pytest.raises(ConfigurationError, match="other models or CPUs"):
        merge_profiles([paths["part0"], other], tmp_path / "refused.parquet")


def test_each_part_of_a_profile_holds_shapes_of_both_phases():
    """Every third shape from the first would give the first part prompts only; split by phase,
    each part holds its share of both, and the parts together hold every shape once."""
    drawn = [(phase, [n]) for n, phase in enumerate(["prefill", "decode", "decode"] * 4)]
    parts = [shapes_of_part(drawn, part, 3) for part in range(3)]
    assert all({phase for phase, _ in shapes} == {"prefill", "decode"} for shapes in parts)
    assert sorted(shape for shapes in parts for shape in shapes) == sorted(drawn)


def test_a_part_that_draws_no_shape_measures_the_engine_and_its_runs(tmp_path):
    """With more parts than shapes of either phase, a part holds none: it still measures the engine's
    own work and its runs' passes (and its share of the idle probes, here none), rather than failing
    on an empty fit."""
    from harness.profiling.profile_app import profile_in_process

    table = profile_in_process("tiny_mixtral", tmp_path / "p.parquet", [*TINY_PROFILE, "part=11", "parts=12"])
    assert set(table["stage"]) == {"checkpoint", "pass_overhead", "in_run_iteration", "in_run_layer", "in_run_expert"}


def test_qllm_profile_refuses_a_part_outside_its_parts_in_one_line(tmp_path):
    refused = run_cli(f"out={tmp_path / 'p.parquet'}", "part=2", "parts=2", module="harness.profiling.profile_app",
                      expect_ok=False)  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "part=2 parts=2" in lines[0] and not (tmp_path / "p.parquet").exists()
