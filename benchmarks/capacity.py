"""Capacity: each engine's sustained tokens per second on the default trace, which overloads them all.

The shipped trace offers several times what one core serves, so throughput (generated tokens /
makespan) is each engine's capacity. Every engine replays the same requests on the same model
(default `model=small_mixtral`, whose head dimension vLLM's CPU attention accepts); the table
gives throughput, its share of the offered load, LS and BE TTFT, and each engine's throughput
as a multiple of `hf_generate`'s and of vLLM's.

vLLM (or any OpenAI-compatible server) joins the table with `--server-url`, replayed through
the `openai_http` engine (issue 11) when this checkout has it. Start the server first, on its
own core (docs/capacity.md has the vLLM command):

    taskset -c 1 python benchmarks/capacity.py [--engines qllm,fcfs_cb,...] \
        [--server-url http://127.0.0.1:8011/v1 --server-name vllm] [hydra overrides]
"""

from __future__ import annotations

import argparse

import torch

from harness.app import CONF_DIR, compose_config, run_engine
from harness.engines import RunResources
from harness.replay import requests_from_trace
from harness.workload import load_workload

ENGINES = ("qllm", "fcfs_cb", "priority_cb", "hf_generate")
HTTP_ENGINE = "openai_http"  # conf/engine/openai_http.yaml: the HTTP client engine


def offered_tok_s(requests) -> float:
    """Output tokens the trace asks for per second of its arrivals."""
    span_s = max(r.arrival_s for r in requests) - min(r.arrival_s for r in requests)
    return sum(r.output_len for r in requests) / span_s


def summary_row(summary, priority_class: str):
    return summary.set_index("priority_class").loc[priority_class]


def measure(name: str, engine_cfg, resources: RunResources, requests, cfg) -> dict:
    summary = run_engine(name, engine_cfg, resources, requests, cfg, {"run_id": "capacity"})["summary"]
    every, ls, be = (summary_row(summary, c) for c in ("all", "LS", "BE"))
    return {"tok_s": every.throughput_tok_s, "n_finished": int(every.n_finished), "ls_p50": ls.ttft_s_p50,
            "ls_p99": ls.ttft_s_p99, "be_p50": be.ttft_s_p50}  # fmt: skip


def measure_server(url: str, overrides: list[str], requests) -> dict | None:
    """The same requests against the server at `url` through the openai_http engine, if this checkout has it."""
    if not (CONF_DIR / "engine" / f"{HTTP_ENGINE}.yaml").exists():
        print(f"\n{url}: skipped; comparing with a server needs the {HTTP_ENGINE} engine (conf/engine/{HTTP_ENGINE}.yaml, "
              "issue 11), which this checkout does not have")  # fmt: skip
        return None
    cfg = compose_config(f"engine=[{HTTP_ENGINE}]", f"engine.{HTTP_ENGINE}.base_url={url}", "progress=false",
                         "warmup_tokens=0", *overrides)  # fmt: skip
    return measure(HTTP_ENGINE, cfg.engine[HTTP_ENGINE], RunResources(cfg), requests, cfg)


def print_table(results: dict[str, dict], offered: float, num_requests: int) -> None:
    print(f"\n{'engine':14s} {'tok/s':>7s} {'of offered':>10s} {'finished':>9s} {'LS TTFT p50':>12s} {'p99':>8s} "
          f"{'BE TTFT p50':>12s}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:14s} {r['tok_s']:7.1f} {r['tok_s'] / offered:10.2f} {r['n_finished']:4d}/{num_requests:<4d} "
              f"{r['ls_p50']:10.3f} s {r['ls_p99']:6.2f} s {r['be_p50']:10.2f} s")  # fmt: skip
    for reference in ("hf_generate", "vllm"):
        if reference in results:
            ratios = "  ".join(f"{n} {r['tok_s'] / results[reference]['tok_s']:.2f}x" for n, r in results.items())
            print(f"throughput / {reference}'s:  {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES), help="in-process engines (conf/engine), comma-separated")
    parser.add_argument("--server-url", help="an OpenAI-compatible server's API root, e.g. http://127.0.0.1:8011/v1")
    parser.add_argument("--server-name", default="vllm", help="the server's row in the table")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: model=small_mixtral)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = args.overrides if any(o.startswith("model=") for o in args.overrides) else ["model=small_mixtral",
                                                                                           *args.overrides]  # fmt: skip
    engines = args.engines.split(",")
    cfg = compose_config(f"engine=[{args.engines}]", "progress=false", *overrides)
    requests = requests_from_trace(load_workload(cfg.trace))
    offered = offered_tok_s(requests)
    model = cfg.model
    print(f"{' '.join(overrides)}: dtype {model.dtype}, cpu_kernels {model.cpu_kernels}; trace {cfg.trace.name}: "
          f"{len(requests)} requests offering {offered:.0f} tok/s; {args.threads} torch thread(s)")  # fmt: skip
    resources = RunResources(cfg)
    results = {name: measure(name, cfg.engine[name], resources, requests, cfg) for name in engines}
    if args.server_url:
        server = measure_server(args.server_url, overrides, requests)
        if server is not None:
            results[args.server_name] = server
    print_table(results, offered, len(requests))


if __name__ == "__main__":
    main()
