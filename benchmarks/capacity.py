"""Capacity: each engine's sustained tokens per second on the default trace, which overloads them all.

The shipped trace offers several times what one core serves, so throughput (generated tokens /
makespan) is each engine's capacity. Every engine replays the same requests on the same model
(default `model=small_mixtral`: vLLM's CPU attention needs a head dimension of 32 or more), at
each batch limit of `--batch-sizes` (every engine alike: `max_batch_size`, vLLM's
`--max-num-seqs`): `qllm` with one phase per batch (the paper's mode, `qllm_one_phase`), then
`qllm` (its default), `fcfs_cb` and `priority_cb` with mixed batches (prompts ride in the decode
pass), and `hf_generate`. Each table gives throughput, its share of the offered load, LS and BE
TTFT, and throughput as a multiple of `hf_generate`'s and of each server's.

Servers (vLLM, or any OpenAI-compatible one) join the table of their batch limit with
`--server NAME,BATCH,URL`, replayed through the `openai_http` engine (issue 11) when this
checkout has it. Start each server first, on a core of its own (docs/capacity.md has the vLLM
command):

    taskset -c 1 python benchmarks/capacity.py [--batch-sizes 16 64] \
        [--server vllm,16,http://127.0.0.1:8011/v1 ...] [hydra overrides, e.g. model.dtype=bfloat16]
"""

from __future__ import annotations

import argparse

import torch
from omegaconf import DictConfig, OmegaConf

from harness.app import CONF_DIR, compose_config, run_engine
from harness.engines import RunResources
from harness.replay import requests_from_trace
from harness.traces.workload import load_workload

VARIANTS = {  # label: (engine, mixed batches)
    "qllm_one_phase": ("qllm", False), "qllm": ("qllm", True), "fcfs_cb+mixed": ("fcfs_cb", True),
    "priority_cb+mixed": ("priority_cb", True), "hf_generate": ("hf_generate", False),
}
HTTP_ENGINE = "openai_http"  # conf/engine/openai_http.yaml: the HTTP client engine


def offered_tok_s(requests) -> float:
    """Output tokens the trace asks for per second of its arrivals."""
    span_s = max(r.arrival_s for r in requests) - min(r.arrival_s for r in requests)
    return sum(r.output_len for r in requests) / span_s


def variant_config(engine_cfg: DictConfig, batch_size: int, mixed: bool) -> DictConfig:
    """`engine_cfg` with every engine's batch limit at `batch_size`, and mixed batches on or off."""
    engine_cfg = OmegaConf.create(OmegaConf.to_container(engine_cfg, resolve=True))
    limits = engine_cfg.policy if "policy" in engine_cfg else engine_cfg  # hf_generate has no policy node
    limits.max_batch_size = batch_size
    if "mixed_batches" in limits:
        limits.mixed_batches = mixed
    return engine_cfg


def measure(name: str, engine_cfg: DictConfig, resources: RunResources, requests, cfg: DictConfig) -> dict:
    summary = run_engine(name, engine_cfg, resources, requests, cfg, {"run_id": "capacity"})["summary"]
    every, ls, be = (summary.set_index("priority_class").loc[c] for c in ("all", "LS", "BE"))
    return {"tok_s": every.throughput_tok_s, "n_finished": int(every.n_finished), "ls_p50": ls.ttft_s_p50,
            "ls_p99": ls.ttft_s_p99, "be_p50": be.ttft_s_p50}  # fmt: skip


def measure_server(url: str, overrides: list[str], requests) -> dict | None:
    """The same requests against the server at `url` through the openai_http engine, if this checkout has it."""
    if not (CONF_DIR / "engine" / f"{HTTP_ENGINE}.yaml").exists():
        print(f"{url}: skipped; comparing with a server needs the {HTTP_ENGINE} engine (conf/engine/{HTTP_ENGINE}.yaml, "
              "issue 11), which this checkout does not have")  # fmt: skip
        return None
    cfg = compose_config(f"engine=[{HTTP_ENGINE}]", f"engine.{HTTP_ENGINE}.base_url={url}", "progress=false",
                         "warmup_tokens=0", *overrides)  # fmt: skip
    return measure(HTTP_ENGINE, cfg.engine[HTTP_ENGINE], RunResources(cfg), requests, cfg)


def print_table(batch_size: int, results: dict[str, dict], offered: float, num_requests: int) -> None:
    print(f"\nbatch limit {batch_size}:")
    print(f"  {'engine':18s} {'tok/s':>7s} {'of offered':>10s} {'finished':>9s} {'LS TTFT p50':>12s} {'p99':>8s} "
          f"{'BE TTFT p50':>12s}")  # fmt: skip
    for name, r in results.items():
        print(f"  {name:18s} {r['tok_s']:7.1f} {r['tok_s'] / offered:10.2f} {r['n_finished']:4d}/{num_requests:<4d} "
              f"{r['ls_p50']:10.3f} s {r['ls_p99']:6.2f} s {r['be_p50']:10.2f} s")  # fmt: skip
    references = [name for name in results if name == "hf_generate" or name.startswith("server ")]
    for reference in references:
        ratios = "  ".join(f"{n} {r['tok_s'] / results[reference]['tok_s']:.2f}x" for n, r in results.items()
                           if n != reference)  # fmt: skip
        print(f"  throughput / {reference}'s: {ratios}")


def parse_server(spec: str) -> tuple[str, int, str]:
    name, batch_size, url = spec.split(",", 2)
    return name, int(batch_size), url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64], help="every engine's batch limit")
    parser.add_argument("--server", type=parse_server, action="append", default=[],
                        help="NAME,BATCH,URL: an OpenAI-compatible server started with that batch limit")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: model=small_mixtral)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = args.overrides if any(o.startswith("model=") for o in args.overrides) else ["model=small_mixtral",
                                                                                           *args.overrides]  # fmt: skip
    engines = sorted({name for name, _ in VARIANTS.values()})
    cfg = compose_config(f"engine=[{','.join(engines)}]", "progress=false", *overrides)
    requests = requests_from_trace(load_workload(cfg.trace))
    offered = offered_tok_s(requests)
    print(f"{' '.join(overrides)}: dtype {cfg.model.dtype}, cpu_kernels {cfg.model.cpu_kernels}; trace "
          f"{cfg.trace.name}: {len(requests)} requests offering {offered:.0f} tok/s; {args.threads} torch thread(s)")  # fmt: skip
    resources = RunResources(cfg)
    for batch_size in args.batch_sizes:
        results = {}
        for label, (name, mixed) in VARIANTS.items():
            engine_cfg = variant_config(cfg.engine[name], batch_size, mixed)
            results[label] = measure(name, engine_cfg, resources, requests, cfg)
        for server_name, server_batch_size, url in args.server:
            if server_batch_size == batch_size and (server := measure_server(url, overrides, requests)) is not None:
                results[f"server {server_name}"] = server
        print_table(batch_size, results, offered, len(requests))


if __name__ == "__main__":
    main()
