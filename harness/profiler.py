"""Measure the real executor stage by stage, for the simulator's profiled cost model (qllm/sim/profiled.py).

For each pass shape of a grid (phase, batch size, length) the real executor runs passes at
`expert` granularity (one expert per checkpoint) and at `layer` granularity, and every quantum
(the work between two checkpoints) is timed as the engine times it, around `next()`. A quantum is
one stage, or a stage plus a neighbour, and the neighbours are separated by subtraction:

- `attention`: a layer's attention half (layers after the first); `pass_start`: the first quantum
  (embeddings, masks, rotary and layer 0's attention) minus the pass's median attention;
- `expert`: a routed expert that is neither the first nor the last of its block, by the tokens it
  received (read from the block's routing in the pass's frame); `router`: a block's first quantum
  minus its expert's time; `combine`: its last quantum minus its expert's time (with a shared
  expert, which runs last, the shared expert and the block's output together);
- `dense_mlp`: a dense layer's MLP half; `layer`: a sparse layer called whole; `pass_end`: the last
  quantum (final norm, LM head, next tokens, KV commit).

The engine's own work is measured on a real run of `QLLMEngine`: the gaps between its quanta, at a
checkpoint (`checkpoint`) and between passes (`pass_overhead`), by phase and batch size.
"""

from __future__ import annotations

import time
from collections.abc import Generator

import numpy as np
import pandas as pd
import torch

from qllm.clock import RealClock
from harness.recorder import Recorder
from harness.replay import replay
from qllm.executor import ATTENTION, run_to_completion
from qllm.real_executor import RealExecutor
from qllm.request import DEFAULT_PRIORITY, Request
from qllm.sequence import Sequence
from qllm.sim.profiled import interpolate

EXPERT_BINS = 24  # expert samples are summarized in this many geometric bins of received tokens
MIN_ENGINE_SAMPLES = 3  # batch sizes the engine run saw fewer times are left to interpolation


def measure_stages(model, grid: dict, repeats: int, seed: int = 0) -> pd.DataFrame:
    """Profile rows (qllm.sim.profiled.COLUMNS) for every stage but the engine's, over `grid`:
    {phase: {"batch_size": [...], "length": [...]}}."""
    by_parts, whole = RealExecutor(model, "expert", 1), RealExecutor(model, "layer")
    if by_parts.num_layers < 2:
        raise ValueError("profiling needs at least 2 decoder layers (layer 0's attention shares its quantum)")
    num_experts = next(parts.moe for parts in by_parts.adapter.parts if parts.moe is not None).num_experts
    generator = torch.Generator().manual_seed(seed)
    points = [{"phase": phase, "batch_size": batch_size, "length": length}
              for phase, axes in grid.items() for batch_size in axes["batch_size"] for length in axes["length"]]  # fmt: skip
    samples, experts, blocks = [], [], []
    order = np.random.default_rng(seed)
    for _ in range(repeats):  # the whole grid once per repeat, shuffled: a burst of other load spreads over the
        for index in order.permutation(len(points)):  # points, and no shape runs warm after itself as in a loop
            point = points[index]
            shape = (point["phase"], point["batch_size"], point["length"])
            quanta = timed_quanta(by_parts.forward(batch_for(by_parts, *shape, generator)))
            parts = split_expert_pass(quanta, num_experts)
            samples += [{**point, "stage": stage, "seconds": s} for stage, s in parts["stages"]]
            experts += parts["experts"]
            blocks += [{**point, **block} for block in parts["blocks"]]
            layer_quanta = timed_quanta(whole.forward(batch_for(whole, *shape, generator)))
            samples += [{**point, "stage": "layer", "seconds": s} for _, s, _ in layer_quanta[1:-1]]
    expert_rows = expert_table(pd.DataFrame(experts, columns=["tokens", "seconds"]))
    samples += block_samples(blocks, expert_rows)
    return pd.concat([summarize(pd.DataFrame(samples)), expert_rows], ignore_index=True)


def timed_quanta(forward_pass: Generator) -> list[tuple[object, float, dict]]:
    """(checkpoint, or None at the pass's end; seconds; the innermost generator frame's locals) per quantum."""
    quanta = []
    while True:
        start = time.perf_counter()
        try:
            checkpoint = next(forward_pass)
        except StopIteration:
            quanta.append((None, time.perf_counter() - start, {}))
            return quanta
        seconds = time.perf_counter() - start
        frame = forward_pass
        while frame.gi_yieldfrom is not None:
            frame = frame.gi_yieldfrom
        quanta.append((checkpoint, seconds, dict(frame.gi_frame.f_locals)))


def split_expert_pass(quanta: list, num_experts: int) -> dict:
    """One expert-granularity pass's quanta, attributed to stages (see the module docstring)."""
    attention = [s for cp, s, _ in quanta[1:] if cp is not None and cp.expert == ATTENTION]
    stages = [("attention", s) for s in attention] + [("pass_start", quanta[0][1] - np.median(attention))]
    stages.append(("pass_end", quanta[-1][1]))
    experts, blocks, block = [], [], []
    for checkpoint, seconds, frame in quanta[1:-1]:
        if checkpoint.expert == ATTENTION:
            continue
        if checkpoint.expert is None:  # a dense layer's MLP half
            stages.append(("dense_mlp", seconds))
            continue
        if "moe" in frame:  # inside the block: the routing of its tokens is known
            received = torch.bincount(frame["moe"].index.flatten(), minlength=num_experts).tolist()
        block.append((checkpoint.expert, seconds))
        if frame.get("moe") is None:  # the block's last checkpoint, after its residual add
            units = [(unit, s, received[unit] if unit < num_experts else None) for unit, s in block]
            experts += [(tokens, s) for _, s, tokens in units[1:-1]]
            blocks.append({"first_tokens": units[0][2], "first_s": units[0][1],
                           "last_tokens": units[-1][2], "last_s": units[-1][1]})  # fmt: skip
            block = []
    return {"stages": stages, "experts": experts, "blocks": blocks}


def block_samples(blocks: list[dict], expert_rows: pd.DataFrame) -> list[dict]:
    """`router` and `combine`: a block's first and last quanta less their expert's interpolated time."""
    tokens, seconds = expert_rows["tokens"].to_numpy(float), expert_rows["seconds"].to_numpy(float)

    def expert_s(received):
        return 0.0 if received is None else float(interpolate(np.array([float(received)]), tokens, seconds)[0])

    samples = []
    for block in blocks:
        point = {key: block[key] for key in ("phase", "batch_size", "length")}
        samples.append({**point, "stage": "router", "seconds": block["first_s"] - expert_s(block["first_tokens"])})
        samples.append({**point, "stage": "combine", "seconds": block["last_s"] - expert_s(block["last_tokens"])})
    return samples


def expert_table(experts: pd.DataFrame) -> pd.DataFrame:
    """Expert samples in geometric bins of received tokens: each bin's median tokens and seconds."""
    edges = np.unique(np.round(np.geomspace(1, experts["tokens"].max() + 1, EXPERT_BINS + 1)))
    bins = pd.cut(experts["tokens"], edges, right=False, include_lowest=True)
    rows = experts.groupby(bins, observed=True).agg(tokens=("tokens", "median"), seconds=("seconds", "median"),
                                                    samples=("seconds", "size"))  # fmt: skip
    return rows.reset_index(drop=True).assign(stage="expert", phase="any", batch_size=0, length=0)


def summarize(samples: pd.DataFrame) -> pd.DataFrame:
    """The median of each (stage, phase, batch size, length)'s samples."""
    keys = ["stage", "phase", "batch_size", "length"]
    rows = samples.groupby(keys).agg(seconds=("seconds", "median"), samples=("seconds", "size")).reset_index()
    return rows.assign(tokens=0.0)


def batch_for(executor: RealExecutor, phase: str, batch_size: int, length: int, generator) -> list[Sequence]:
    """A batch whose next pass has the shape: a prompt of `length` tokens per sequence (prefill), or
    one new token after `length - 1` cached ones (decode; the cache is filled by an untimed prefill)."""
    prompt_len = length if phase == "prefill" else length - 1
    vocab = executor.config.vocab_size
    batch = [
        Sequence(Request(f"p{i}", 0.0, prompt_len, 2, "BE", DEFAULT_PRIORITY["BE"]),
                 torch.randint(1, vocab, (prompt_len,), generator=generator).tolist(), executor.new_kv())
        for i in range(batch_size)
    ]  # fmt: skip
    if phase == "decode":
        for sequence, token in zip(batch, run_to_completion(executor.forward(batch))):
            sequence.output_ids.append(token)
    return batch


def measure_engine(build_engine, requests: list[Request]) -> pd.DataFrame:
    """Profile rows `checkpoint` and `pass_overhead`: the gaps between an engine's quanta while it is
    never idle (every request arrives at 0), by the phase and batch size of the quantum after the gap.
    `build_engine(clock, recorder)` builds the engine to measure."""
    clock = RealClock()
    recorder = Recorder(clock)
    replay(requests, build_engine(clock, recorder), recorder, progress=False)
    samples = []
    for before, after in zip(recorder.quanta, recorder.quanta[1:]):
        stage = "pass_overhead" if before.layer is None else "checkpoint"
        samples.append({"stage": stage, "phase": after.kind, "batch_size": len(after.request_ids), "length": 0,
                        "seconds": after.t_start_s - before.t_end_s})  # fmt: skip
    rows = summarize(pd.DataFrame(samples))
    return rows[rows["samples"] >= MIN_ENGINE_SAMPLES]
