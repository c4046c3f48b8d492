"""Which experts implementation is fastest at each token count: the crossover a per-pass switch would use.

Times the first MoE block of the model (default small_mixtral) on N tokens with each experts
implementation (transformers' `eager`, `grouped_mm`, `batched_mm`, and `onednn` from
`cpu_kernels=onednn`), interleaved, and prints the median per N and the fastest. An
implementation stops being timed once it is `--give-up` times slower than the fastest at some N
(batched_mm copies each token's expert weights: it takes minutes at large N).

    taskset -c 1 python benchmarks/experts_crossover.py [--tokens 1 4 16 64 256 1024] [hydra overrides]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra.utils import instantiate

from harness.app import compose_config

IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm", "onednn")


def time_block(model, block, implementation: str, tokens: torch.Tensor) -> float:
    model.config._experts_implementation_internal = implementation  # read by every experts call
    start = time.perf_counter()
    with torch.no_grad():
        block(tokens)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--give-up", type=float, default=5.0, help="stop timing an implementation this many times slower")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: model=small_mixtral)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = args.overrides or ["model=small_mixtral"]
    model = instantiate(compose_config(*overrides, "model.cpu_kernels=onednn").model)
    block = model.model.layers[0].mlp
    generator = torch.Generator().manual_seed(0)
    timed = list(IMPLEMENTATIONS)
    print(f"{' '.join(overrides)} ({model.dtype}): layer 0's MoE block, median of {args.repeats}, ms")
    print(f"{'tokens':>6s} " + " ".join(f"{name:>11s}" for name in IMPLEMENTATIONS) + "  fastest")
    for num_tokens in args.tokens:
        tokens = torch.randn(1, num_tokens, model.config.hidden_size, generator=generator).to(model.dtype)
        times = {name: [] for name in timed}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name in timed:
                times[name].append(time_block(model, block, name, tokens))
        medians = {name: statistics.median(t[1:]) for name, t in times.items()}
        fastest = min(medians, key=medians.get)
        cells = [f"{medians[name] * 1e3:11.2f}" if name in medians else f"{'-':>11s}" for name in IMPLEMENTATIONS]
        print(f"{num_tokens:6d} " + " ".join(cells) + f"  {fastest}", flush=True)
        timed = [name for name in timed if medians[name] <= args.give_up * medians[fastest]]


if __name__ == "__main__":
    main()
