"""Measure the real executor stage by stage, for the simulator's profiled cost model (qllm/sim/profiled.py).

Pass shapes are drawn at random (`draw_shapes`): batch sizes, and per row a prompt length (prefill)
or a cached context (decode), sometimes all rows alike and sometimes not (padded, some with one
row far longer than the rest), up to the sizes the runs will meet. Passes are timed as a run meets
them: after untimed passes of the smallest and largest shapes (`warm_up`), and a decode step after
another step of the same batch (`batch_for`). For each shape the real executor runs a pass at
`expert` granularity (one expert per checkpoint) and one at `layer` granularity, and every quantum
(the work between two checkpoints) is timed as the engine times it, around `next()`. A quantum is one stage, or a stage
plus a neighbour, and the neighbours are separated by subtraction:

- `attention`: a layer's attention half (layers after the first); `pass_start`: the first quantum
  (embeddings, masks, rotary and layer 0's attention) minus the pass's median attention;
- `expert`: a routed expert that is neither the first nor the last of its block, by the tokens it
  received (as the pass reports them, `ForwardPass.routed_tokens`); `router`: a block's first quantum
  minus its expert's time; `combine`: its last quantum minus its expert's time (with a shared
  expert, which runs last, the shared expert and the block's output together);
- `dense_mlp`: a dense layer's MLP half; `layer`: a sparse layer called whole; `pass_end`: the last
  quantum (final norm, LM head, next tokens, KV commit);
- `whole_pass_start`: the first quantum of the `layer` pass minus what its layer 0 takes: a pass that
  calls layer 0 whole starts dearer than one that runs it in halves, by an amount that grows with
  the keys (measured, not explained: 0.26 ms of 1.6 ms on tiny_olmoe, 4 rows of 600 keys).

The engine's own work is measured on a real run of `QLLMEngine`: the gaps between its quanta, at a
checkpoint (`checkpoint`) and between passes (`pass_overhead`), with the shape of the quantum after
the gap. And what waking up costs it (`idle`): a request's first token comes later when it arrives at
an engine that has been idle than at one that has just run, by as much as a tiny model's whole
prefill on this VM (`measure_idle`). And what prompts cost the decode steps after them
(`after_prompts`): a tiny model's decode step right after a prompt of some thousand tokens ran 1.5-1.8x
its steady time, the next ones less, back to steady after about eight (`measure_after_prompts`).
And what the passes of a real run take beside the stages timed alone (`in_run_<granularity>`): the
passes of engine runs with every request at 0 at each granularity, each run with its own batch
limit, each pass with its shape (`measure_in_run`; the simulator's level, qllm.sim.level), each run
between two slices of the stages' shapes (`measure_stages`), so that the runs and the stages they are
set against span the same seconds. Every sample is kept; the cost model fits them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from qllm.clock import RealClock
from qllm.errors import ConfigurationError
from harness.recorder import Recorder
from harness.replay import replay
from qllm.executor import ATTENTION, ForwardPass, run_to_completion
from qllm.real.executor import RealExecutor
from qllm.request import DEFAULT_PRIORITY, Request
from qllm.sequence import Sequence
from qllm.sim.cost_model import PassShape
from qllm.sim.profiled import fit_expert, piecewise

WARM_TOKENS = 16  # steps an engine runs straight through before an idle probe's reference (measure_idle)
# Untimed decode steps before a decode shape's timed one. The prefills that fill a batch's caches slow the
# steps after them (`measure_after_prompts`): after three, a step still ran 4-10 % over the steady one on
# the Xeon VM (tiny_gpt_oss, tiny_olmoe, prompts of 400 tokens in 8 rows); after eight, within 2 %.
WARM_STEPS = 8


@dataclass(frozen=True)
class ShapeSpace:
    """The pass shapes a profile draws from: up to what the runs it serves will meet."""

    num_shapes: int = 150  # shapes drawn (each timed at expert and at layer granularity)
    max_batch_size: int = 32
    max_prompt_len: int = 512  # per row, prefill
    max_batch_tokens: int = 2048  # prompt tokens per prefill pass (the policies' max_batch_tokens)
    max_context_len: int = 768  # cached tokens per row, decode
    max_batch_context: int = 16384  # cached tokens per decode pass
    decode_share: float = 0.6  # of the shapes drawn
    uneven_share: float = 0.5  # shapes whose rows differ in length (padded)
    long_row_share: float = 0.5  # of the uneven shapes: one row as long as the budget leaves room for


def draw_shapes(space: ShapeSpace, rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    """(phase, per-row lengths: prompt tokens at prefill, cached tokens at decode) for each shape,
    batch sizes log-uniform, so small and large passes are both well covered."""
    shapes = []
    for _ in range(space.num_shapes):
        decode = rng.random() < space.decode_share
        longest, budget = (space.max_context_len, space.max_batch_context) if decode else (space.max_prompt_len,
                                                                                            space.max_batch_tokens)  # fmt: skip
        batch_size = int(np.exp(rng.uniform(0, np.log(space.max_batch_size + 1))))
        batch_size = max(1, min(batch_size, space.max_batch_size, budget))
        cap = max(1, min(longest, budget // batch_size))
        rows = batch_size if rng.random() < space.uneven_share else 1
        # Half the shapes log-uniform in length (short rows well covered), half uniform (long ones, where
        # attention's quadratic part and the caches make the cost bend).
        lengths = np.exp(rng.uniform(0, np.log(cap + 1), rows)) if rng.random() < 0.5 else rng.uniform(1, cap + 1, rows)
        lengths = np.resize(np.clip(lengths.astype(int), 1 if not decode else 2, cap), batch_size)
        if rows > 1 and rng.random() < space.long_row_share:
            # The budget bounds a batch's real tokens, not its longest row: a cohort of short prompts
            # beside a long one is padded far past the budget, and its attention pays for the padding.
            room = min(longest, budget - int(lengths[1:].sum()))
            lengths[0] = rng.integers(lengths[0], max(lengths[0], room) + 1)
        shapes.append(("decode" if decode else "prefill", [int(n) for n in lengths]))
    return shapes


def shape_columns(phase: str, lengths: list[int]) -> dict:
    """The profile's shape columns (qllm.sim.profiled.COLUMNS) for a pass over rows of `lengths`."""
    if phase == "decode":
        return {"phase": phase, "batch_size": len(lengths), "query_len": 1, "key_len": max(lengths) + 1,
                "real_tokens": len(lengths)}  # fmt: skip
    return {"phase": phase, "batch_size": len(lengths), "query_len": max(lengths), "key_len": max(lengths),
            "real_tokens": sum(lengths)}  # fmt: skip


def measure_stages(model, space: ShapeSpace, seed: int = 0, part: int = 0, parts: int = 1,
                   between: Sequence[Callable[[], pd.DataFrame]] = ()) -> pd.DataFrame:  # fmt: skip
    """Profile rows (qllm.sim.profiled.COLUMNS) for every stage but the engine's, over shapes drawn from
    `space`: those of the shapes `seed` draws that fall to `part` of `parts` (`shapes_of_part`; `parts`
    profiles measured at different times, merged by qllm.sim.profiled.merge_profiles, cover the shapes
    one would). The shapes are timed in len(`between`) + 1 slices, each phase's spread over them
    (`shapes_of_part` again), and `between[i]()` measures after slice i: its rows join the table.
    What is set against the stages (the passes of runs, qllm.sim.level) so spans the same seconds as
    they do: measured after all of them, its level carried the machine's speed in other seconds
    (tiny_mixtral on the Xeon VM, three profiles of the same shapes back to back: prompt levels 0.79,
    1.18 and 0.92)."""
    by_parts, whole = RealExecutor(model, "expert", 1), RealExecutor(model, "layer")
    if by_parts.num_layers < 2:
        raise ValueError("profiling needs at least 2 decoder layers (layer 0's attention shares its quantum)")
    num_experts = next(parts.moe for parts in by_parts.adapter.parts if parts.moe is not None).num_experts
    sparse = [parts.moe is not None for parts in whole.adapter.parts]  # `layer` times MoE layers only
    if not any(sparse[1:]):
        raise ValueError("profiling needs an MoE layer after the first (layer 0 shares its quantum with the pass's start)")
    generator = torch.Generator().manual_seed(seed)
    shapes = shapes_of_part(draw_shapes(space, np.random.default_rng(seed)), part, parts)
    warm_up(by_parts, whole, shapes=shapes, generator=generator)
    samples, experts, blocks, measured_between = [], [], [], []
    slices = len(between) + 1
    for piece in range(slices):
        for phase, lengths in shapes_of_part(shapes, piece, slices):
            point = shape_columns(phase, lengths)
            quanta = timed_quanta_of(by_parts, batch_for(by_parts, phase, lengths, generator))
            parts = split_expert_pass(quanta, num_experts)
            samples += [{**point, "stage": stage, "seconds": s} for stage, s in parts["stages"]]
            experts += parts["experts"]
            blocks += [{**point, **block} for block in parts["blocks"]]
            layer_s = [s for _, s, _ in timed_quanta_of(whole, batch_for(whole, phase, lengths, generator))]
            sparse_s = [s for layer, s in enumerate(layer_s[1:-1], start=1) if sparse[layer]]  # layer i is quantum i
            samples += [{**point, "stage": "layer", "seconds": s} for s in sparse_s]
            samples.append({**point, "stage": "whole_pass_start", "seconds": layer_s[0] - layer_zero_s(sparse, sparse_s, parts)})
        if piece < len(between):
            measured_between.append(between[piece]())
    expert_rows = pd.DataFrame(experts, columns=["tokens", "seconds"]).assign(stage="expert", phase="any")
    samples += block_samples(blocks, expert_rows)
    stages = pd.concat([pd.DataFrame(samples).assign(tokens=0.0), expert_rows], ignore_index=True).fillna(0)
    return pd.concat([stages, *measured_between], ignore_index=True)


def shapes_of_part(shapes: list[tuple[str, list[int]]], part: int, parts: int) -> list[tuple[str, list[int]]]:
    """Of each phase's shapes, those at `part`, `part + parts`, ...: split by phase, every part holds both
    phases while each has `parts` shapes, and so prices passes of both on its own (the first part alone
    prices a run's capacity in benchmarks/sim_fidelity.py)."""
    return [shape for phase in ("prefill", "decode") for shape in [s for s in shapes if s[0] == phase][part::parts]]


def warm_up(*executors: RealExecutor, shapes: list[tuple[str, list[int]]], generator) -> None:
    """Run, untimed, each phase's smallest and largest of `shapes` on each executor: a process's first
    passes of a size run up to 3x slower (buffers and kernels set up on first use), and would be
    charged to whichever shapes were drawn first."""
    chosen = []
    for phase in ("prefill", "decode"):
        of_phase = sorted((sum(lengths), lengths) for p, lengths in shapes if p == phase)
        chosen += [(phase, lengths) for _, lengths in of_phase[:1] + of_phase[-1:]]
    for executor in executors:
        for phase, lengths in chosen:
            timed_quanta_of(executor, batch_for(executor, phase, lengths, generator))


def layer_zero_s(sparse: list[bool], sparse_s: list[float], parts: dict) -> float:
    """What layer 0 alone takes in a pass that calls layers whole: a sparse layer's median, or for a
    dense layer 0 its attention and dense MLP halves as the same shape's expert pass timed them."""
    if sparse[0]:
        return float(np.median(sparse_s))
    halves = {stage: [s for name, s in parts["stages"] if name == stage] for stage in ("attention", "dense_mlp")}
    return float(np.median(halves["attention"]) + np.median(halves["dense_mlp"]))


def timed_quanta_of(executor: RealExecutor, batch: list[Sequence]) -> list[tuple[object, float, list[int] | None]]:
    """`timed_quanta` of a pass over `batch`, whose KV blocks then go back to the pool: a profile that
    kept them would grow the pool (and time its growth) as no serving run does."""
    try:
        return timed_quanta(executor.forward(batch))
    finally:
        for sequence in batch:
            sequence.kv.free()


def timed_quanta(forward_pass: ForwardPass) -> list[tuple[object, float, list[int] | None]]:
    """(checkpoint, or None at the pass's end; seconds; the tokens each routed expert received, while
    the pass is inside an MoE block, else None: `ForwardPass.routed_tokens`) per quantum."""
    quanta = []
    while True:
        start = time.perf_counter()
        try:
            checkpoint = next(forward_pass)
        except StopIteration:
            quanta.append((None, time.perf_counter() - start, None))
            return quanta
        seconds = time.perf_counter() - start
        quanta.append((checkpoint, seconds, forward_pass.routed_tokens))


def split_expert_pass(quanta: list, num_experts: int) -> dict:
    """One expert-granularity pass's quanta, attributed to stages (see the module docstring)."""
    attention = [s for cp, s, _ in quanta[1:] if cp is not None and cp.expert == ATTENTION]
    stages = [("attention", s) for s in attention] + [("pass_start", quanta[0][1] - np.median(attention))]
    stages.append(("pass_end", quanta[-1][1]))
    experts, blocks, block = [], [], []
    for checkpoint, seconds, routed in quanta[1:-1]:
        if checkpoint.expert == ATTENTION:
            continue
        if checkpoint.expert is None:  # a dense layer's MLP half
            stages.append(("dense_mlp", seconds))
            continue
        if routed is not None:  # inside the block: the routing of its tokens is known
            received = routed
        block.append((checkpoint.expert, seconds))
        if routed is None:  # the block's last checkpoint, after its residual add
            units = [(unit, s, received[unit] if unit < num_experts else None) for unit, s in block]
            experts += [(tokens, s) for _, s, tokens in units[1:-1]]
            blocks.append({"first_tokens": units[0][2], "first_s": units[0][1],
                           "last_tokens": units[-1][2], "last_s": units[-1][1]})  # fmt: skip
            block = []
    return {"stages": stages, "experts": experts, "blocks": blocks}


def block_samples(blocks: list[dict], expert_rows: pd.DataFrame) -> list[dict]:
    """`router` and `combine`: a block's first and last quanta less their expert's fitted time."""
    if not blocks:  # a part of a profile that drew none of its shapes
        return []
    if expert_rows.empty:  # every block ran at most two experts: its first and last quanta, router and combine in them
        raise ConfigurationError(
            f"the {len(blocks)} MoE blocks timed ran at most two experts each, so the router's and the combine's "
            f"time cannot be told from the experts': draw more shapes (shapes.num_shapes) or measure fewer parts"
        )
    knots, seconds = fit_expert(expert_rows["tokens"].to_numpy(float), expert_rows["seconds"].to_numpy(float))

    def expert_s(received):
        return float(piecewise(knots, seconds, received)) if received else 0.0  # None: no expert; 0: none ran

    shape_keys = ("phase", "batch_size", "query_len", "key_len", "real_tokens")
    samples = []
    for block in blocks:
        point = {key: block[key] for key in shape_keys}
        samples.append({**point, "stage": "router", "seconds": block["first_s"] - expert_s(block["first_tokens"])})
        samples.append({**point, "stage": "combine", "seconds": block["last_s"] - expert_s(block["last_tokens"])})
    return samples


def batch_for(executor: RealExecutor, phase: str, lengths: list[int], generator) -> list[Sequence]:
    """A batch whose next pass has the shape: a prompt of `lengths[i]` tokens in row i (prefill), or
    one new token after `lengths[i]` cached ones (decode). A decode batch's caches are filled by
    untimed passes: prefills (rows of like length together), then WARM_STEPS decode steps of the
    whole batch (fewer where a row is too short), so the timed step follows steps of its batch as in
    a run. A tiny model's steps slow down after other work (its weights pushed out of the CPU's
    caches): timed straight after the prefills, a step ran 10-20 % slower than in a run, and after one
    untimed step 1-6 % slower than the steps after it; the simulator inherited the difference."""
    vocab = executor.config.vocab_size
    steps = min(WARM_STEPS, min(lengths) - 1) if phase == "decode" else 0
    batch = [
        Sequence(Request(f"p{i}", 0.0, n - steps, steps + 2, "BE", DEFAULT_PRIORITY["BE"]),
                 torch.randint(1, vocab, (n - steps,), generator=generator).tolist(), executor.new_kv())
        for i, n in enumerate(lengths)
    ]  # fmt: skip
    if phase == "decode":
        by_length = sorted(batch, key=lambda sequence: sequence.request.prompt_len)
        prefills = [by_length[start : start + 4] for start in range(0, len(by_length), 4)]
        for rows in prefills + [batch] * steps:
            timed_step(executor, rows)  # untimed: its time is not kept
    return batch


def measure_idle(build_engine, gaps_s: list[float], prompt_lens: list[int]) -> pd.DataFrame:
    """Profile rows `idle`, one per probe: a one-token request of `prompt_lens[i]` tokens arrives at an
    engine that has run straight through for a while (WARM_TOKENS steps of another request), then the
    same request after the engine has been idle for `gaps_s[i]` seconds; `seconds` is how much later
    the second one's first token came (after its arrival), and `idle_s` the gap. On the development VM
    a tiny model's 60-token prefill came 0.4 ms later after 3-10 ms idle, 1.4 ms after 30-100 ms and
    2.9 ms after 300 ms (on 5.3 ms), and the steps after it ran slower for a while (not modelled: this
    is the first pass's delay). And two rows `wake` a probe: how long after its arrival each request
    was put into a batch (`idle_s` 0: the one straight after work), the window in which later arrivals
    join it: the replay's sleep overshoots and the first request submitted after idle runs cold
    (small_mixtral on the development VM: 0.2-0.9 ms, where two requests 0.55 ms apart shared a
    prefill the simulator ran apart). `build_engine(clock, recorder)` builds the engine to measure."""
    clock = RealClock()
    recorder = Recorder(clock)
    engine = build_engine(clock, recorder)
    samples = []
    for probe, (gap, prompt_len) in enumerate(zip(gaps_s, prompt_lens)):
        ttft, batched = {}, {}
        for name, arrival_s, output_len in (("warm", 0.0, WARM_TOKENS), ("busy", 0.0, 1), ("idle", gap, 1)):
            request = Request(f"{name}{probe}", arrival_s, prompt_len, output_len, "BE", DEFAULT_PRIORITY["BE"])
            replay([request], engine, recorder, progress=False)  # each replay restarts the clock
            events = recorder.requests[request.request_id]
            ttft[name], batched[name] = events.token_s[0] - arrival_s, events.first_scheduled_s - arrival_s
        shape = shape_columns("prefill", [prompt_len])
        samples += [{"stage": "idle", **shape, "idle_s": gap, "seconds": ttft["idle"] - ttft["busy"]},
                    {"stage": "wake", **shape, "idle_s": gap, "seconds": batched["idle"]},
                    {"stage": "wake", **shape, "idle_s": 0.0, "seconds": batched["busy"]}]  # fmt: skip
    return pd.DataFrame(samples)


def measure_after_prompts(model, probes: list[tuple[int, list[int]]], max_prompt_len: int, steps: int,
                          generator) -> pd.DataFrame:
    """Profile rows `after_prompts`, `steps` per probe (prompt tokens, a decode batch's contexts): the
    batch decodes `steps` steps straight through (its steady step: their median), then a prefill of
    that many prompt tokens runs (rows of up to `max_prompt_len`), then the batch decodes `steps` more;
    per step after the prompts (`step_after`, from 1), `seconds` is how much longer it took than the
    steady step, `tokens` the prompt tokens. The prompts' work pushes the decode's weights out of the
    CPU's caches, and the steps after refill them."""
    executor = RealExecutor(model, "iteration")
    samples = []
    for prompt_tokens, contexts in probes:
        rows = -(-prompt_tokens // max_prompt_len)
        prompts = [prompt_tokens // rows + (row < prompt_tokens % rows) for row in range(rows)]  # as even as can be
        batch = batch_for(executor, "decode", contexts, generator)
        try:
            steady = float(np.median([timed_step(executor, batch) for _ in range(steps)]))
            timed_quanta_of(executor, batch_for(executor, "prefill", prompts, generator))
            after = [timed_step(executor, batch) for _ in range(steps)]
        finally:
            for sequence in batch:
                sequence.kv.free()
        samples += [{"stage": "after_prompts", **shape_columns("decode", contexts), "tokens": float(prompt_tokens),
                     "step_after": step, "seconds": seconds - steady} for step, seconds in enumerate(after, start=1)]  # fmt: skip
    return pd.DataFrame(samples)


def measure_in_run(build_engine, runs: list[tuple[int, list[Request]]], granularities: list[str]) -> pd.DataFrame:
    """Profile rows `in_run_<granularity>`: every one-phase pass of real engine runs, one per (batch
    limit, requests) of `runs` at each of `granularities` (requests arriving at 0, so the engine never
    idles), each with its shape and its seconds in the run (its quanta's, the engine's work between
    them left out); a decode pass also with its step after the last pass that fed prompts
    (`step_after`) and their `tokens`. `build_engine(clock, recorder, granularity, max_batch_size)`
    builds the engine. The stages timed alone add up to more or less than such passes take
    (qllm.sim.level)."""
    samples = []
    for batch_size, requests in runs:
        prompt_lens = {request.request_id: request.prompt_len for request in requests}
        for granularity in granularities:
            clock = RealClock()
            recorder = Recorder(clock)
            replay(requests, build_engine(clock, recorder, granularity, max_batch_size=batch_size), recorder, progress=False)
            passes, quanta = [], []
            for quantum in recorder.quanta:
                quanta.append(quantum)
                if quantum.layer is None:  # a pass ends with its LM head
                    passes.append(quanta)
                    quanta = []
            steps, prompt_tokens = 0, 0
            for quanta, groups in zip(passes, pass_groups([quanta[0].request_ids for quanta in passes], prompt_lens)):
                prompts = [shape for shape, _ in groups if not shape.is_decode]
                steps, prompt_tokens = (0, sum(s.num_real_tokens for s in prompts)) if prompts else (steps + 1, prompt_tokens)
                if len(groups) == 1:  # a mixed pass is two groups, priced apart: not a pass of one shape
                    shape = groups[0][0]
                    samples.append({"stage": f"in_run_{granularity}", "phase": "decode" if shape.is_decode else "prefill",
                                    "batch_size": shape.batch_size, "query_len": shape.query_len, "key_len": shape.key_len,
                                    "real_tokens": shape.num_real_tokens, "tokens": float(prompt_tokens if steps else 0),
                                    "step_after": steps, "seconds": sum(q.t_end_s - q.t_start_s for q in quanta)})  # fmt: skip
    return pd.DataFrame(samples)


def pass_groups(passes: list[tuple[str, ...]], prompt_lens: dict[str, int]) -> list[list[tuple[PassShape, list[int]]]]:
    """Per pass (the requests it held, in order), its row groups as the executors lay them out: (shape,
    the rows' cached tokens) for its decode rows and for its prompt rows. A request's first pass feeds
    its prompt whole; each later one feeds one token after the prompt and the tokens generated before."""
    decoded = {}  # request -> decode passes it has been in
    shapes = []
    for request_ids in passes:
        prompts = [r for r in request_ids if r not in decoded]
        contexts = [prompt_lens[r] + 1 + decoded[r] for r in request_ids if r in decoded]  # tokens once fed
        groups = []
        if contexts:
            groups.append((PassShape(len(contexts), 1, max(contexts), len(contexts)), [n - 1 for n in contexts]))
        if prompts:
            lens = [prompt_lens[r] for r in prompts]
            groups.append((PassShape(len(lens), max(lens), max(lens), sum(lens)), lens))
        for r in request_ids:
            decoded[r] = decoded[r] + 1 if r in decoded else 0
        shapes.append(groups)
    return shapes


def timed_step(executor: RealExecutor, batch: list[Sequence]) -> float:
    """Seconds of one pass over `batch` in one go, each row's token appended after it (the next decodes)."""
    start = time.perf_counter()
    tokens = run_to_completion(executor.forward(batch))
    seconds = time.perf_counter() - start
    for sequence, token in zip(batch, tokens):
        sequence.output_ids.append(token)
    return seconds


def measure_engine(build_engine, requests: list[Request]) -> pd.DataFrame:
    """Profile rows `checkpoint` and `pass_overhead`: the gaps between an engine's quanta while it is
    never idle (every request arrives at 0), with the phase, rows and tokens of the quantum after
    the gap. `build_engine(clock, recorder)` builds the engine to measure."""
    clock = RealClock()
    recorder = Recorder(clock)
    replay(requests, build_engine(clock, recorder), recorder, progress=False)
    samples = []
    for before, after in zip(recorder.quanta, recorder.quanta[1:]):
        rows, tokens = len(after.request_ids), after.num_tokens
        query_len = 1 if after.kind == "decode" else -(-tokens // rows)
        samples.append({"stage": "pass_overhead" if before.layer is None else "checkpoint", "phase": after.kind,
                        "batch_size": rows, "query_len": query_len, "key_len": query_len, "real_tokens": tokens,
                        "tokens": 0.0, "seconds": after.t_start_s - before.t_end_s})  # fmt: skip
    return pd.DataFrame(samples)
