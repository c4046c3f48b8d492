"""Forward-pass times of the executor per model variant: decode steps and prefill passes, interleaved.

Each variant is the run's model with Hydra overrides (default: small_mixtral with its own
kernels, with `cpu_kernels=onednn`, and with oneDNN in bfloat16). Every round runs each variant
in turn, so machine noise hits all alike; medians and ratios to the first variant are printed,
with whether each variant's greedy tokens equal the first's.

    taskset -c 1 python benchmarks/pass_times.py [--decode 1 4 16 32] [--prefill 1x64 16x64] \
        [--variant NAME=OVERRIDE,OVERRIDE ...] [--granularity layer] [hydra overrides]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from hydra.utils import instantiate

from harness.app import compose_config
from harness.profiling.profiler import timed_step
from qllm.real.executor import RealExecutor
from qllm.request import Request
from qllm.sequence import Sequence

DEFAULT_VARIANTS = (
    "stock=model.cpu_kernels=null",
    "onednn=model.cpu_kernels=onednn",
    "onednn-bf16=model.cpu_kernels=onednn,model.dtype=bfloat16",
)


def build(variant: str, base: list[str], granularity: str) -> tuple[str, RealExecutor]:
    name, _, overrides = variant.partition("=")
    model = instantiate(compose_config(*base, *filter(None, overrides.split(","))).model)
    return name, RealExecutor(model, granularity)


def new_batch(executor: RealExecutor, prompts: torch.Tensor, output_len: int) -> list[Sequence]:
    return [
        Sequence(Request(str(row), 0.0, len(ids), output_len, "BE", 1), ids, executor.new_kv())
        for row, ids in enumerate(prompts.tolist())
    ]


def prompts_for(executor: RealExecutor, batch_size: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, executor.config.vocab_size, (batch_size, length), generator=generator)


def decode_times(executors: dict, batch_size: int, context: int, rounds: int, steps: int) -> dict:
    """Median decode step per variant (batch of `batch_size` after a `context`-token prefill), and tokens."""
    batches = {}
    for name, executor in executors.items():
        batches[name] = new_batch(executor, prompts_for(executor, batch_size, context, batch_size), 10**6)
        timed_step(executor, batches[name])  # the prefill, untimed
    times = {name: [] for name in executors}
    for _ in range(rounds):
        for name, executor in executors.items():
            times[name] += [timed_step(executor, batches[name]) for _ in range(steps)]
    return {name: (statistics.median(t), [s.output_ids for s in batches[name]]) for name, t in times.items()}


def prefill_times(executors: dict, batch_size: int, length: int, rounds: int) -> dict:
    times, tokens = {name: [] for name in executors}, {}
    for _ in range(rounds):
        for name, executor in executors.items():
            batch = new_batch(executor, prompts_for(executor, batch_size, length, length), 1)
            times[name].append(timed_step(executor, batch))
            tokens[name] = [s.output_ids for s in batch]
    return {name: (statistics.median(t), tokens[name]) for name, t in times.items()}


def report(label: str, results: dict) -> None:
    first_name = next(iter(results))
    first_s, first_tokens = results[first_name]
    cells = [f"{name} {s * 1e3:7.1f} ms x{first_s / s:4.2f}{'' if tok == first_tokens else ' (tokens differ)'}"
             for name, (s, tok) in results.items()]  # fmt: skip
    print(f"{label:14s} " + " | ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode", type=int, nargs="*", default=[1, 4, 16, 32], help="decode batch sizes")
    parser.add_argument("--prefill", nargs="*", default=["1x64", "4x64", "16x64"], help="BATCHxLENGTH prompts")
    parser.add_argument("--context", type=int, default=64, help="prompt tokens before the timed decode steps")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="decode steps per variant per round")
    parser.add_argument("--granularity", default="layer")
    parser.add_argument("--variant", action="append", help="NAME=OVERRIDE,OVERRIDE (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every variant (default: model=small_mixtral)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = args.overrides or ["model=small_mixtral"]
    executors = dict(build(v, base, args.granularity) for v in args.variant or DEFAULT_VARIANTS)
    print(f"{' '.join(base)}, {args.granularity} granularity, {args.threads} thread(s), medians of "
          f"{args.rounds} interleaved rounds; ratio: the first variant's time / this one's")  # fmt: skip
    for batch_size in args.decode:
        report(f"decode {batch_size}", decode_times(executors, batch_size, args.context, args.rounds, args.steps))
    for shape in args.prefill:
        batch_size, length = map(int, shape.split("x"))
        report(f"prefill {shape}", prefill_times(executors, batch_size, length, args.rounds))


if __name__ == "__main__":
    main()
