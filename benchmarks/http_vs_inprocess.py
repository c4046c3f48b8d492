"""The same engine in-process and behind `qllm-serve`, on the default trace, measured in one run:

- every request's generated tokens over HTTP equal the in-process run's (same config, same weights);
- LS TTFT p50 over HTTP against in-process (target <= 1.2x in-process + 5 ms): what the server
  (HTTP, JSON, SSE, the engine thread's hand-offs) adds to what the client sees.

The engine gets one core in both runs: the in-process replay runs on `--engine-cpu`; then
`qllm-serve` runs there and this client moves to `--client-cpu`.

    python benchmarks/http_vs_inprocess.py [--engine qllm] [--engine-cpu 0] [--client-cpu 1] [overrides, e.g. model=small_mixtral]
"""

from __future__ import annotations

import argparse
import os

import torch

from harness.app import compose_config, run_engine
from harness.engines import RunResources
from harness.replay import requests_from_trace
from harness.server_process import ServerProcess
from harness.traces.workload import load_workload

TARGET_RATIO, TARGET_SLACK_S = 1.2, 0.005


def replay(engine_name: str, overrides: list[str]) -> dict:
    """One engine of conf/config.yaml over the configured trace, as qllm-bench runs it (warm-up included)."""
    cfg = compose_config(f"engine=[{engine_name}]", "progress=false", "record_token_ids=true", *overrides)
    requests = requests_from_trace(load_workload(cfg.trace))
    return run_engine(engine_name, cfg.engine[engine_name], RunResources(cfg), requests, cfg, {"run_id": engine_name})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="qllm", help="the engine config (conf/engine) run both ways")
    parser.add_argument("--engine-cpu", type=int, default=0, help="the core the engine runs on, both ways")
    parser.add_argument("--client-cpu", type=int, default=1, help="the core of the HTTP client")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by both runs (model, trace, ...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # what builds the engine goes to the server too; the rest (trace, seed, ...) shapes both replays
    engine_overrides = [o for o in args.overrides if o.split(".")[0].split("=")[0] in ("model", "executor", "engine")]
    replay_overrides = [o for o in args.overrides if o not in engine_overrides]

    os.sched_setaffinity(0, {args.engine_cpu})
    local = replay(args.engine, args.overrides)
    os.sched_setaffinity(0, {args.client_cpu})
    with ServerProcess(f"engine={args.engine}", *engine_overrides, "log_level=warning", cpu=args.engine_cpu) as server:
        remote = replay("openai_http", [f"engine.openai_http.base_url={server.base_url}", *replay_overrides])
    report(local, remote, args)


def report(local: dict, remote: dict, args) -> None:
    ids = lambda table: table.set_index("request_id")["token_ids"].map(list)  # noqa: E731
    local_ids, remote_ids = ids(local["requests"]), ids(remote["requests"])
    same = sum(local_ids[rid] == remote_ids[rid] for rid in local_ids.index)
    statuses = remote["requests"]["status"].value_counts().to_dict()
    print(f"engine {args.engine}, engine on core {args.engine_cpu}, HTTP client on core {args.client_cpu}")
    print(f"requests over HTTP: {statuses}; tokens identical to in-process: {same} / {len(local_ids)}")
    summaries = {name: run["summary"].set_index("priority_class") for name, run in (("in-process", local),
                                                                                      ("http", remote))}  # fmt: skip
    for priority_class in ("LS", "BE", "all"):
        for name, summary in summaries.items():
            row = summary.loc[priority_class]
            print(f"{priority_class:3s} {name:10s} TTFT p50 {row.ttft_s_p50 * 1e3:8.2f} ms  p99 {row.ttft_s_p99 * 1e3:8.2f} ms"
                  f"  e2e p50 {row.e2e_s_p50:7.3f} s  throughput {row.throughput_tok_s:7.1f} tok/s")  # fmt: skip
    local_p50, remote_p50 = summaries["in-process"].loc["LS", "ttft_s_p50"], summaries["http"].loc["LS", "ttft_s_p50"]
    bound = TARGET_RATIO * local_p50 + TARGET_SLACK_S
    print(f"LS TTFT p50 over HTTP / in-process: {remote_p50 / local_p50:.2f}x "
          f"({remote_p50 * 1e3:.2f} ms vs {local_p50 * 1e3:.2f} ms; target <= {TARGET_RATIO}x + "
          f"{TARGET_SLACK_S * 1e3:.0f} ms = {bound * 1e3:.2f} ms: {'met' if remote_p50 <= bound else 'MISSED'})")  # fmt: skip
    print(f"every request's tokens identical: {'yes' if same == len(local_ids) else 'NO'}")


if __name__ == "__main__":
    main()
