"""The paper's setting on one GPU, in one command: Mixtral-8x7B in NF4, measured beside the simulator.

    python benchmarks/gpu_check.py [--rates 2 6] [--requests 64] [--oracle 8] [--repeats 3] [--out results/gpu_check]

1. Builds a random-weight Mixtral-8x7B in NF4 on the GPU from its config (conf/model/
   mixtral_8x7b_4bit.yaml without `pretrained`: nothing is downloaded; qllm/modeling/nf4_model.py).
2. Times decode passes at batch 1, 8, 16, 32 (after a 200-token prompt) and prefills of 1 x 200 and
   16 x 200 tokens, at layer and expert granularity, beside the simulator's time for the same
   passes on `h100_80gb`, `a100_80gb` and `paper_calibrated` where conf/hardware has it.
3. Replays the first `--requests` requests of traces/sharegpt_paper_scale.parquet at each rate
   through `qllm` and `fcfs_rtc`, and checks the first `--oracle` requests of the qllm run token
   for token against `generate` (fp16: a batched pass may round differently from a lone one, so a
   late divergence is reported, not fatal).
4. Writes `<out>_passes.csv` and `<out>_replay.csv` and prints both.

Meant to take under 8 minutes on one H100 80GB. Without a CUDA device it exits at once (status 1)
with one line saying so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(PROJECT_ROOT))

from harness.app import compose_config  # noqa: E402
from qllm.executor import run_to_completion  # noqa: E402
from qllm.request import Request  # noqa: E402
from qllm.resources import RunResources  # noqa: E402
from qllm.sequence import Sequence  # noqa: E402

NO_CUDA = "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing was run"
DECODE_BATCHES = (1, 8, 16, 32)
PREFILLS = (1, 16)
PROMPT_LEN = 200
GRANULARITIES = ("layer", "expert")
HARDWARE = ("h100_80gb", "a100_80gb", "paper_calibrated")  # the last only where its YAML exists
MODEL = ("model=mixtral_8x7b_4bit", "model.pretrained=null", "model.device=cuda")
TRACE = "traces/sharegpt_paper_scale.parquet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs=2, default=[2.0, 6.0], help="two arrival rates, req/s")
    parser.add_argument("--requests", type=int, default=64, help="requests replayed per rate and engine")
    parser.add_argument("--oracle", type=int, default=8, help="requests checked against generate")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per shape (median)")
    parser.add_argument("--max-output-len", type=int, default=128, help="clip the trace's outputs (time budget)")
    parser.add_argument("--out", default="results/gpu_check", help="prefix of the two CSV tables")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeats < 1 or not 0 <= args.oracle <= args.requests:
        parser.error("need --requests >= 1, --repeats >= 1 and 0 <= --oracle <= --requests")
    if min(args.rates) <= 0:
        parser.error("--rates must be positive")
    return args


def hardware_available(conf_dir: Path = PROJECT_ROOT / "conf") -> list[str]:
    return [name for name in HARDWARE if (conf_dir / "hardware" / f"{name}.yaml").is_file()]


def pass_shapes() -> list[tuple[str, int, int]]:
    """(kind, batch size, prompt length) of every timed pass."""
    return [("decode", b, PROMPT_LEN) for b in DECODE_BATCHES] + [("prefill", b, PROMPT_LEN) for b in PREFILLS]


def new_batch(executor, batch_size: int, length: int, vocab_size: int) -> list[Sequence]:
    return [Sequence(Request(f"p{i}", 0.0, length, 1 << 20, "BE", 1),
                     [(7 + 31 * i + 17 * t) % vocab_size for t in range(length)], executor.new_kv())
            for i in range(batch_size)]  # fmt: skip


def pass_seconds(executor, now, kind: str, batch_size: int, length: int, repeats: int, vocab_size: int) -> float:
    """Median seconds of a `kind` pass over `batch_size` rows of `length`-token prompts, read on `now`
    (a synchronized wall clock, or a simulator's virtual clock: the same code times both)."""
    times, batch = [], None
    for _ in range(repeats + 1):  # the first pass warms up
        if kind == "prefill" or batch is None:
            for seq in batch or []:
                seq.kv.free()
            batch = new_batch(executor, batch_size, length, vocab_size)
            if kind == "decode":  # the prompt is cached first, untimed
                for seq, token in zip(batch, run_to_completion(executor.forward(batch))):
                    seq.output_ids.append(token % vocab_size)
        start = now()
        tokens = run_to_completion(executor.forward(batch))
        times.append(now() - start)
        for seq, token in zip(batch, tokens):
            seq.output_ids.append(token % vocab_size)
    for seq in batch:
        seq.kv.free()
    return statistics.median(times[1:])


def simulated_seconds(hardware: str, granularity: str, shape: tuple[str, int, int], repeats: int) -> float:
    resources = RunResources(compose_config(*MODEL, "executor=sim", f"hardware={hardware}"))
    clock = resources.new_clock()
    executor = resources.executor(clock=clock, granularity=granularity)
    return pass_seconds(executor, clock.now, *shape, repeats, resources.model_config.vocab_size)


def measured_seconds(model, granularity: str, shape: tuple[str, int, int], repeats: int) -> float:
    from qllm.real.executor import RealExecutor

    def now() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    return pass_seconds(RealExecutor(model, granularity=granularity), now, *shape, repeats, model.config.vocab_size)


def pass_rows(model, repeats: int, hardware: list[str]) -> list[dict]:
    rows = []
    for granularity in GRANULARITIES:
        for shape in pass_shapes():
            row = {"kind": shape[0], "batch": shape[1], "prompt": shape[2], "granularity": granularity,
                   "measured_ms": 1e3 * measured_seconds(model, granularity, shape, repeats)}  # fmt: skip
            for name in hardware:
                row[f"{name}_ms"] = 1e3 * simulated_seconds(name, granularity, shape, repeats)
            rows.append(row)
    return rows


def replay_rows(model, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Each rate and engine's summary row; and the oracle lines for the first rate's qllm run."""
    from baselines.hf_generate import greedy_generate
    from harness.app import run_engine
    from harness.replay import requests_from_trace
    from harness.traces.workload import load_workload
    from qllm.prompts import prompt_token_ids

    rows, oracle = [], []
    for rate in args.rates:
        cfg = compose_config(*MODEL, "engine=[qllm,fcfs_rtc]", f"trace.path={TRACE}", "trace.name=sharegpt_paper_scale",
                             f"trace.num_requests={args.requests}", f"trace.rate={rate}",
                             f"trace.max_output_len={args.max_output_len}", "progress=false", "record_token_ids=true")  # fmt: skip
        resources = RunResources(cfg, model=model)
        requests = requests_from_trace(load_workload(cfg.trace))
        for name, engine_cfg in cfg.engine.items():
            params = {"run_id": f"gpu_check_{rate:g}", "rate": rate, "trace": "sharegpt_paper_scale"}
            result = run_engine(name, engine_cfg, resources, requests, cfg, params)
            rows.extend(result["summary"].to_dict("records"))
            if name == "qllm" and not oracle:
                tokens = dict(zip(result["requests"]["request_id"], result["requests"]["token_ids"]))
                for request in requests[: args.oracle]:
                    expected = greedy_generate(model, [prompt_token_ids(request, model.config.vocab_size)],
                                               request.output_len)[0]  # fmt: skip
                    oracle.append(oracle_line(request.request_id, list(tokens[request.request_id]), expected))
    return rows, oracle


def oracle_line(request_id: str, actual: list[int], expected: list[int]) -> str:
    if actual == expected:
        return f"{request_id}: {len(expected)} tokens equal generate's"
    first = next((i for i, (a, e) in enumerate(zip(actual, expected)) if a != e), min(len(actual), len(expected)))
    return f"{request_id}: differs from generate at token {first} of {len(expected)}"


def write_table(rows: list[dict], path: Path) -> str:
    """`rows` as CSV at `path` (folders made); returns the table as printed."""
    table = pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return f"{path}:\n{table.to_string(index=False, float_format=lambda x: f'{x:.3f}')}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 1
    from hydra.utils import instantiate

    started = time.perf_counter()
    model = instantiate(compose_config(*MODEL).model)
    print(f"model built in {time.perf_counter() - started:.0f} s; "
          f"{torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated on {torch.cuda.get_device_name()}")  # fmt: skip
    out = PROJECT_ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    print(write_table(pass_rows(model, args.repeats, hardware_available()), Path(f"{out}_passes.csv")))
    rows, oracle = replay_rows(model, args)
    print(write_table(rows, Path(f"{out}_replay.csv")))
    print("\n".join(oracle))
    print(f"gpu_check: {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
