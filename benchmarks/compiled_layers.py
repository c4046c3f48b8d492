"""Decode passes whose layers run as compiled tensor functions, against the executor (issue 19).

An experiment, not an engine option: on this CPU it did not pay (docs/capacity.md, "Compiled
layers"), so the machinery lives here, with the measurement, and the engine does not use it.

Between two layer checkpoints a decode pass runs, per layer, one compiled function of tensors
only -- the attention half (norms, projections, rope, the KV write into the pool and the gather
of the batch view, SDPA, residual) then the MLP half's input norm and the router -- and, eagerly,
the experts (their per-expert row counts are data: `onednn` reads them to the host) and the
residual add. Shapes are bucketed as vLLM buckets them: rows padded to a power of two, key length
to a power of two of blocks, so that `torch.compile` compiles once per (layer, bucket).

Padded rows feed PAD tokens at position 0, attend only to the padding block's first slot, write
zeros there (the padding block stays zeros) and never reach the experts or the LM head. Padded
key slots are masked. Each layer's pool slots [capacity * block_size, heads, dim] are arguments,
written in place (a view of the pool storage made inductor copy the whole layer's pool per call),
their first dimension dynamic (the pool grows).

transformers' `sdpa` skips its one-token GQA packing under dynamo and repeats keys and values per
query head instead (6x slower SDPA here); `decode_sdpa`, registered as `sdpa` while this script
runs, packs under dynamo too and calls transformers' own function otherwise.

    taskset -c 0 python benchmarks/compiled_layers.py [--batch 16] [--context 64] [--rounds 30] \
        [--mode max-autotune-no-cudagraphs] [--dynamic] [--check-guards] [--layers]

Each round times one eager step and one compiled step (order alternating) on two copies of the
same batch; prints medians, the per-pair ratio, whether the tokens agree, and the first compiled
step's time (the bucket's compile). `--layers` adds one layer's halves timed alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types
from collections.abc import Generator
from dataclasses import dataclass

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from harness.profiling.profiler import timed_step
from qllm.modeling import rotary
from qllm.executor import Checkpoint, run_to_completion
from qllm.kv import PADDING_BLOCK
from qllm.real.executor import RealExecutor
from qllm.sequence import Sequence
from qllm.real.unified_cache import UnifiedDynamicCache

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_original_sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]


def decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' `sdpa`, except that a one-token query under torch.compile also attends on the
    key/value heads (its `pack_gqa`, which transformers applies only outside dynamo) rather than
    repeating keys and values per query head (6x slower on CPU here)."""
    groups = getattr(module, "num_key_value_groups", 1)
    if (torch.compiler.is_compiling() and query.shape[2] == 1 and groups > 1 and attention_mask is not None
            and attention_mask.shape[1] == 1 and kwargs.get("softcap") is None and kwargs.get("position_bias") is None):
        batch, heads, _, dim = query.shape
        packed = query.reshape(batch, heads // groups, groups, dim)
        out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask,
                                                               dropout_p=dropout, scale=scaling)
        return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None
    return _original_sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


ALL_ATTENTION_FUNCTIONS.register("sdpa", decode_sdpa)
PAD_TOKEN_ID = 0


def row_bucket(rows: int, buckets=ROW_BUCKETS) -> int | None:
    return next((b for b in buckets if b >= rows), None)


def block_bucket(blocks: int, minimum: int = 4) -> int:
    """Blocks per row padded to a power of two (at least `minimum`)."""
    bucket = minimum
    while bucket < blocks:
        bucket *= 2
    return bucket


class _PoolCache:
    """What the attention module calls `update` on, inside the compiled function: writes the new
    keys and values of one layer into the pool and returns the padded batch view."""

    def __init__(self, key_slots, value_slots, block_size, write_index, gather_index, real, rows, key_length):
        self.storages = (key_slots, value_slots)  # each [capacity * block_size, heads, dim] (one layer's slots)
        self.block_size = block_size
        self.write_index = write_index  # [rows]: pool slot of each row's new token (padded rows: slot 0)
        self.gather_index = gather_index  # [rows * blocks]: block tables, padded
        self.real = real  # [rows, 1, 1]: 1.0 for real rows, 0.0 for padded ones (which write zeros)
        self.rows = rows
        self.key_length = key_length

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        news = (key_states, value_states)
        return tuple(self._write_and_gather(storage, new) for storage, new in zip(self.storages, news))

    def _write_and_gather(self, slots, states):
        # In place on the argument: a view of the pool storage would make inductor copy the pool.
        slots.index_copy_(0, self.write_index, states[:, :, 0] * self.real)
        blocks = slots.view(-1, self.block_size, *slots.shape[1:])
        gathered = blocks.index_select(0, self.gather_index)
        return gathered.view(self.rows, -1, *slots.shape[1:])[:, : self.key_length].transpose(1, 2)


def _layer_step(parts, route, block_size, hidden, cos, sin, mask, position_ids, key_slots, value_slots,
                write_index, gather_index, real):  # fmt: skip
    """hidden [rows, 1, hidden] -> (after attention [rows, 1, hidden], MLP input [rows, hidden],
    routing weights, routing index)."""
    rows = hidden.shape[0]
    cache = _PoolCache(key_slots, value_slots, block_size, write_index, gather_index, real, rows, mask.shape[-1])
    attended = parts.attend(hidden, (cos, sin), mask, position_ids, cache)
    mlp_input = parts.mlp_input(attended).reshape(rows, -1)
    if route is None:
        return attended, mlp_input, None, None
    _, weights, index = route(mlp_input)
    return attended, mlp_input, weights, index


@dataclass
class Bucket:
    rows: int
    blocks: int


class CompiledDecodeLayers:
    """Decode-only passes of `executor`'s model, layers compiled per bucket (see the module docstring)."""

    def __init__(self, executor, mode: str | None = None, dynamic: bool = False, backend: str = "inductor",
                 row_buckets=ROW_BUCKETS, skip_guards: bool = True) -> None:  # fmt: skip
        self.executor = executor
        self.adapter = executor.adapter
        self.mode, self.dynamic, self.backend = mode, dynamic, backend
        self.row_buckets = row_buckets
        self.skip_guards = skip_guards  # once a (layer, bucket) ran: its guards cost 0.3-0.7 ms a call
        self.warm: set = set()
        self.compiled: dict[tuple[int, int, int], object] = {}  # (layer, rows, blocks) -> compiled function
        self.compile_seconds: dict[tuple[int, int], float] = {}  # (rows, blocks) -> first-call time, all layers

    def takes(self, batch: list[Sequence]) -> bool:
        return (all(seq.num_new_tokens == 1 for seq in batch) and row_bucket(len(batch), self.row_buckets) is not None
                and not rotary.depends_on_length(self.adapter.rotary_emb))  # fmt: skip

    def _function(self, layer: int, rows: int, blocks: int):
        key = (layer, rows, blocks) if not self.dynamic else (layer, 0, 0)
        if key not in self.compiled:
            # A code object per (layer, bucket): dynamo keeps one guarded entry on each, none scanned per call.
            code = _layer_step.__code__.replace(co_name=f"layer{layer}_rows{rows}_blocks{blocks}")
            function = types.FunctionType(code, _layer_step.__globals__, code.co_name)
            self.compiled[key] = torch.compile(function, backend=self.backend, mode=self.mode, dynamic=self.dynamic,
                                               fullgraph=True)  # fmt: skip
        return self.compiled[key]

    @torch.no_grad()
    def _inputs(self, batch: list[Sequence], cache: UnifiedDynamicCache):
        executor, device = self.executor, self.executor.model.device
        pool = executor.kv_pool
        real_rows = len(batch)
        rows = row_bucket(real_rows, self.row_buckets)
        blocks = block_bucket(pool.blocks_for(cache.key_length))
        key_length = blocks * pool.block_size
        cached = cache.num_cached_tokens + [0] * (rows - real_rows)
        ids = [seq.new_token_ids[-1] for seq in batch] + [PAD_TOKEN_ID] * (rows - real_rows)
        hidden = self.adapter.embed_tokens(torch.tensor(ids, device=device)[:, None])
        position_ids = torch.tensor(cached, device=device)[:, None]
        cos, sin = rotary.position_embeddings(self.adapter.rotary_emb, hidden, position_ids)
        keys = torch.arange(key_length, device=device)[None, :]
        positions = position_ids  # [rows, 1]
        masks = {}
        for window in set(self.adapter.sliding_windows):
            mask = keys <= positions
            if window is not None:
                mask &= keys > positions - window
            mask = mask[:, None, None, :]  # [rows, 1, 1, key]
            if executor.uses_additive_mask:
                mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=device).masked_fill(
                    ~mask, torch.finfo(hidden.dtype).min)
            masks[window] = mask
        tables = [kv.blocks[:blocks] + [PADDING_BLOCK] * (blocks - len(kv.blocks[:blocks])) for kv in cache.kvs]
        tables += [[PADDING_BLOCK] * blocks] * (rows - real_rows)
        gather_index = torch.tensor(tables, device=device).flatten()
        write = [kv.slots(c, c + 1)[0] for kv, c in zip(cache.kvs, cache.num_cached_tokens)]
        write_index = torch.tensor(write + [PADDING_BLOCK * pool.block_size] * (rows - real_rows), device=device)
        real = torch.tensor([1.0] * real_rows + [0.0] * (rows - real_rows), dtype=hidden.dtype, device=device)
        real = real[:, None, None]
        return Bucket(rows, blocks), hidden, (cos, sin), masks, position_ids, write_index, gather_index, real

    def forward(self, batch: list[Sequence], granularity: str) -> Generator[Checkpoint, None, list[int]]:
        """A decode pass over `batch` (`takes(batch)`), checkpointing after each layer at layer granularity."""
        cache = UnifiedDynamicCache([seq.kv for seq in batch], [1] * len(batch), self.executor.num_layers)
        try:
            bucket, hidden, rope, masks, position_ids, write_index, gather_index, real = self._inputs(batch, cache)
            n = len(batch)
            first = (bucket.rows, bucket.blocks) not in self.compile_seconds
            started = time.perf_counter()
            for layer in range(self.executor.num_layers):
                hidden = self._run_layer(layer, bucket, n, hidden, rope, masks, position_ids, write_index,
                                         gather_index, real)  # fmt: skip
                cache.layers_written.add(layer)
                if granularity == "layer":
                    yield Checkpoint(layer=layer)
            if first:
                self.compile_seconds[(bucket.rows, bucket.blocks)] = time.perf_counter() - started
            tokens = self._greedy(hidden[:n, 0])
            cache.commit()
            return tokens
        finally:
            cache.release()

    @torch.no_grad()
    def _run_layer(self, layer, bucket, n, hidden, rope, masks, position_ids, write_index, gather_index, real):
        """One layer on the padded rows; the experts and the residual add on the `n` real rows only."""
        parts = self.adapter.parts[layer]
        route = None if parts.moe is None else (parts.moe.route or parts.moe.router)
        pool = self.executor.kv_pool
        storage = (pool.layer(layer, 0), pool.layer(layer, 1))  # [capacity * block_size, heads, dim] views
        for tensor in storage:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)  # the pool's capacity grows
        function = self._function(layer, bucket.rows, bucket.blocks)
        mask = masks[self.adapter.sliding_windows[layer]]
        args = (parts, route, pool.block_size, hidden, *rope, mask, position_ids, *storage, write_index,
                gather_index, real)  # fmt: skip
        if self.skip_guards and (layer, bucket.rows, bucket.blocks) in self.warm:
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                attended, mlp_input, weights, index = function(*args)
        else:
            attended, mlp_input, weights, index = function(*args)
            self.warm.add((layer, bucket.rows, bucket.blocks))
        tokens = mlp_input[:n]
        if parts.moe is None:
            output = parts.run_mlp(tokens[None])[0]
        else:
            output = parts.moe.experts(tokens, index[:n], weights[:n])
            if parts.moe.shared is not None:
                output = output + parts.moe.shared(tokens)
            if parts.beside_mlp is not None and parts.moe.shared is not parts.beside_mlp:
                output = output + parts.beside_mlp(tokens)
        attended[:n, 0] = parts.finish_mlp(attended[:n, 0], output)
        return attended

    @torch.no_grad()
    def _greedy(self, last_hidden: torch.Tensor) -> list[int]:
        logits = self.adapter.lm_head(self.adapter.norm(last_hidden))
        return logits.argmax(dim=-1).tolist()


def compiled_step(compiled: CompiledDecodeLayers, batch: list[Sequence]) -> float:
    start = time.perf_counter()
    tokens = run_to_completion(compiled.forward(batch, "layer"))
    elapsed = time.perf_counter() - start
    for seq, token in zip(batch, tokens):
        seq.output_ids.append(token)
    return elapsed


def spread(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1e3:6.1f} ms, range {min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}"


def layer_halves(executor: RealExecutor, compiled: CompiledDecodeLayers, batch: list[Sequence], layer: int = 3):
    """One layer's attention half (+ MLP norm + router), eager and compiled, and its experts, timed alone."""
    cache = UnifiedDynamicCache([seq.kv for seq in batch], [1] * len(batch), executor.num_layers)
    bucket, hidden, rope, masks, position_ids, write_index, gather_index, real = compiled._inputs(batch, cache)
    groups, hiddens = executor._row_groups(batch, [cache])
    group, parts, pool = groups[0], executor.adapter.parts[layer], executor.kv_pool
    function = compiled._function(layer, bucket.rows, bucket.blocks)
    args = (parts, parts.moe.router, pool.block_size, hidden, *rope, masks[None], position_ids, pool.layer(layer, 0),
            pool.layer(layer, 1), write_index, gather_index, real)  # fmt: skip

    @torch.no_grad()
    def eager_half():
        attended = parts.attend(hiddens[0], group.position_embeddings, group.attention_masks[layer],
                                group.position_ids, group.cache)  # fmt: skip
        return parts.moe.router(parts.mlp_input(attended).reshape(len(batch), -1))

    function(*args)  # compiles (the stance below refuses to)

    def compiled_half():
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return function(*args)

    _, weights, index = eager_half()
    tokens = parts.mlp_input(hiddens[0]).reshape(len(batch), -1)
    experts = torch.no_grad()(lambda: parts.moe.experts(tokens, index, weights))
    runs = {"attention half + router, eager": eager_half, "attention half + router, compiled": compiled_half,
            "experts (eager)": experts}  # fmt: skip
    times = {name: [] for name in runs}
    for _ in range(7):
        for name, run in runs.items():
            run()
            start = time.perf_counter()
            for _ in range(50):
                run()
            times[name].append((time.perf_counter() - start) / 50)
    cache.release()
    for name, t in times.items():
        print(f"layer {layer}, {name:34s} median {statistics.median(t) * 1e6:6.0f} us, range "
              f"{min(t) * 1e6:.0f}-{max(t) * 1e6:.0f}")  # fmt: skip


def main() -> None:
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from pass_times import build, new_batch, prompts_for

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=64, help="prompt tokens before the timed decode steps")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--mode", default=None, help="torch.compile mode (default: inductor's default)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic=True instead of one compile per bucket")
    parser.add_argument("--check-guards", action="store_true", help="evaluate dynamo's guards at every call")
    parser.add_argument("--layers", action="store_true", help="also time one layer's halves alone")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: model=small_mixtral)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, executor = build("onednn=", args.overrides or ["model=small_mixtral"], "layer")
    twin = RealExecutor(executor.model, "layer")  # the same model, its own KV pool
    compiled = CompiledDecodeLayers(twin, args.mode, args.dynamic, skip_guards=not args.check_guards)
    prompts = prompts_for(executor, args.batch, args.context, args.batch)
    eager_batch, compiled_batch = new_batch(executor, prompts, 10**6), new_batch(twin, prompts, 10**6)
    timed_step(executor, eager_batch), timed_step(twin, compiled_batch)  # the prefills, eager
    compile_s = compiled_step(compiled, compiled_batch)
    timed_step(executor, eager_batch)
    eager, fast = [], []
    for round_ in range(args.rounds):
        if round_ % 2:
            eager.append(timed_step(executor, eager_batch)), fast.append(compiled_step(compiled, compiled_batch))
        else:
            fast.append(compiled_step(compiled, compiled_batch)), eager.append(timed_step(executor, eager_batch))
    ratios = sorted(e / c for e, c in zip(eager, fast))
    same = sum(a.output_ids == b.output_ids for a, b in zip(eager_batch, compiled_batch))
    print(f"decode {args.batch} after {args.context} tokens, mode={args.mode}, dynamic={args.dynamic}, "
          f"guards {'checked' if args.check_guards else 'skipped'} once warm; {args.rounds} interleaved rounds")
    print(f"first compiled step (compiles bucket {list(compiled.compile_seconds)}): {compile_s:.1f} s")
    print(f"eager    {spread(eager)}\ncompiled {spread(fast)}")
    print(f"eager/compiled per pair: median {statistics.median(ratios):.3f}, quartiles "
          f"{ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f}")
    print(f"rows whose tokens agree: {same}/{args.batch}")
    if args.layers:
        layer_halves(executor, CompiledDecodeLayers(executor, args.mode, args.dynamic), eager_batch)


if __name__ == "__main__":
    main()
