"""Decode throughput of the QLLM executor (UnifiedDynamicCache) vs `model.generate` (DynamicCache).

Same model (conf/model/tiny_mixtral.yaml), same batch, same prompt and output lengths, greedy,
no preemption. Decode tokens/s counts only the steps after the first token (the prefill is
excluded on both sides); each variant runs `--repeats` times, interleaved, and the medians
and their ratios are printed. Target: executor / generate >= 0.9, and the same for the whole
engine (`QLLMEngine`: policy, a checkpoint after every layer, the recorder; no preemption). The `reorder` variant
reverses the batch at every step, so its cache is re-gathered at every step: the worst case.

    python benchmarks/cache_overhead.py [--batch-size 8 --prompt-len 32 --new-tokens 64 --repeats 5 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from harness.app import compose_config
from qllm.clock import RealClock
from harness.engines import RunResources
from harness.recorder import Recorder
from qllm.executor import run_to_completion
from qllm.real.executor import RealExecutor
from qllm.request import Request
from qllm.sequence import Sequence


class StepTimes(StoppingCriteria):
    """Records when `generate` finishes each step; never stops it."""

    def __init__(self, batch_size: int) -> None:
        self.times: list[float] = []
        self.never = torch.zeros(batch_size, dtype=torch.bool)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return self.never


def generate_decode_rate(model, prompts: torch.Tensor, new_tokens: int) -> tuple[float, list[list[int]]]:
    """Decode tokens/s of `model.generate`, and the generated ids."""
    step_times = StepTimes(len(prompts))
    output = model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,  # EOS neither stops nor is suppressed, as in the executor
        pad_token_id=0,
        stopping_criteria=StoppingCriteriaList([step_times]),
    )
    elapsed = step_times.times[-1] - step_times.times[0]  # after the first token, to after the last
    return len(prompts) * (new_tokens - 1) / elapsed, output[:, prompts.shape[1] :].tolist()


def executor_decode_rate(
    executor: RealExecutor, prompts: torch.Tensor, new_tokens: int, reorder: bool = False
) -> tuple[float, list[list[int]]]:
    """Decode tokens/s of the executor driven as an engine would (no preemption), and the ids.

    `reorder` reverses the batch before every step: the worst case for the cache, which then
    gathers every sequence into a new block at every step (a composition change each time).
    """
    sequences = [
        Sequence(Request(str(row), 0.0, len(ids), new_tokens, "BE", 1), ids, executor.new_kv())
        for row, ids in enumerate(prompts.tolist())
    ]
    batch = list(sequences)
    for _ in range(new_tokens):
        if len(batch[0].output_ids) == 1:
            start = time.perf_counter()  # the prefill is done
        if reorder:
            batch.reverse()
        for seq, token_id in zip(batch, run_to_completion(executor.forward(batch))):
            seq.output_ids.append(token_id)
    elapsed = time.perf_counter() - start
    return len(batch) * (new_tokens - 1) / elapsed, [seq.output_ids for seq in sequences]


def engine_decode_rate(resources: RunResources, prompts: torch.Tensor, new_tokens: int) -> tuple[float, list[list[int]]]:
    """Decode tokens/s of the whole QLLM engine (policy, checkpoints at every layer, recorder),
    all requests submitted at once so nothing is preempted, and the ids."""
    clock = RealClock()
    recorder = Recorder(clock)
    engine_cfg = resources.cfg.engine.qllm.copy()
    engine_cfg.policy.max_batch_size = len(prompts)
    engine = resources.build_engine(engine_cfg, "qllm", clock, recorder)
    for row, ids in enumerate(prompts.tolist()):
        engine.submit(Request(str(row), 0.0, len(ids), new_tokens, "BE", 1, prompt_ids=tuple(ids)))
    while not engine.idle():
        engine.step()
    events = [recorder.requests[str(row)] for row in range(len(prompts))]
    start = max(e.token_s[0] for e in events)  # every prefill done
    elapsed = max(e.token_s[-1] for e in events) - start
    return len(prompts) * (new_tokens - 1) / elapsed, [e.token_ids for e in events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = compose_config("engine=[qllm]")
    resources = RunResources(cfg)
    model = resources.model
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, model.config.vocab_size, (args.batch_size, args.prompt_len), generator=generator)
    variants = {
        "generate (DynamicCache)": lambda: generate_decode_rate(model, prompts, args.new_tokens),
        "executor, layer": lambda: executor_decode_rate(RealExecutor(model, "layer"), prompts, args.new_tokens),
        "executor, iteration": lambda: executor_decode_rate(RealExecutor(model, "iteration"), prompts, args.new_tokens),
        "executor, layer, reorder": lambda: executor_decode_rate(RealExecutor(model), prompts, args.new_tokens, True),
        "QLLMEngine, layer": lambda: engine_decode_rate(resources, prompts, args.new_tokens),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {}
    for _ in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, run in variants.items():
            rate, outputs[name] = run()
            rates[name].append(rate)
    medians = {name: statistics.median(values[1:]) for name, values in rates.items()}
    baseline = medians["generate (DynamicCache)"]

    print(f"tiny_mixtral, batch {args.batch_size}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"median of {args.repeats}, {torch.get_num_threads()} threads")
    for name, median in medians.items():
        same = outputs[name] == outputs["generate (DynamicCache)"]
        print(f"  {name:26s} {median:8.1f} decode tok/s   ratio {median / baseline:5.2f}   tokens == generate: {same}")


if __name__ == "__main__":
    main()
