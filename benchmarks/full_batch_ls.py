"""The full-batch experiment, on any OpenAI-compatible server: 16 long BE streams fill the batch,
then one short LS request arrives. Prints LS TTFT on the full batch divided by LS TTFT on the
idle server, measured in one run (goal for qllm-serve: <= 3). Requests go through the harness's
`openai_http` engine, so priorities follow the server's convention.

    # qllm-serve, started here on --server-cpu (default model small_mixtral, engine qllm):
    python benchmarks/full_batch_ls.py [--server-cpu 0 --client-cpu 1] [qllm-serve overrides, e.g. model=...]
    # a server already running (vLLM: --scheduling-policy priority --max-num-seqs 16):
    python benchmarks/full_batch_ls.py --base-url http://127.0.0.1:8011/v1 --model small_mixtral
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from harness.app import compose_config
from qllm.clock import RealClock
from harness.engines import RunResources
from harness.recorder import Recorder
from harness.server_process import ServerProcess
from qllm.request import BE, DEFAULT_PRIORITY, LS, Request

GOAL = 3.0
SERVER_DEFAULTS = {"model": "small_mixtral", "engine": "qllm"}  # the qllm-serve started without --base-url


class Client:
    """The openai_http engine and its recorder, stepped until a condition holds."""

    def __init__(self, base_url: str, model: str | None, convention: str) -> None:
        cfg = compose_config("engine=[openai_http]", f"engine.openai_http.base_url={base_url}",
                             f"engine.openai_http.priority_convention={convention}",
                             *([f"engine.openai_http.model={model}"] if model else []))  # fmt: skip
        self.clock = RealClock()
        self.recorder = Recorder(self.clock)
        self.engine = RunResources(cfg).build_engine(cfg.engine.openai_http, "openai_http", self.clock, self.recorder)
        self.count = 0

    def submit(self, priority_class: str, prompt_len: int, output_len: int) -> Request:
        self.count += 1
        request = Request(f"{priority_class}-{self.count}", self.clock.now(), prompt_len, output_len, priority_class,
                          DEFAULT_PRIORITY[priority_class])  # fmt: skip
        self.engine.submit(request)
        return request

    def tokens_s(self, request: Request) -> list[float]:
        events = self.recorder.requests.get(request.request_id)  # get: only the loop thread adds entries
        return events.token_s if events is not None else []

    def until(self, condition, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not answer in time")
            self.engine.step()

    def ttft_s(self, request: Request) -> float:
        """Served to the end, then its first token's time from submission (a failure stops the benchmark)."""
        self.until(lambda: self.recorder.requests.get(request.request_id) is not None
                   and self.recorder.requests[request.request_id].finish_s is not None)  # fmt: skip
        events = self.recorder.requests[request.request_id]
        if events.failed_reason is not None:
            raise RuntimeError(f"request {request.request_id} failed: {events.failed_reason}")
        return events.token_s[0] - request.arrival_s


def idle_ttft_s(client: Client, args) -> float:
    """The LS request alone on the idle server, median of --repeats after one untimed request (it
    opens the connection the others reuse)."""
    ttfts = [client.ttft_s(client.submit(LS, args.ls_prompt_len, args.ls_output_len)) for _ in range(args.repeats + 1)]
    return statistics.median(ttfts[1:])


def full_batch_ttfts_s(client: Client, args) -> list[float]:
    """16 BE streams, all generating; then LS requests one after another, up to --repeats, each
    sent while every BE stream is still generating: their TTFTs."""
    streams = [client.submit(BE, args.be_prompt_len, args.be_output_len) for _ in range(args.be_streams)]
    client.until(lambda: all(client.tokens_s(s) for s in streams))
    settle_until = time.monotonic() + args.settle_s
    client.until(lambda: time.monotonic() >= settle_until)
    is_full = lambda: all(client.recorder.requests[s.request_id].finish_s is None for s in streams)  # noqa: E731
    ttfts = []
    while len(ttfts) < args.repeats and is_full():
        ttfts.append(client.ttft_s(client.submit(LS, args.ls_prompt_len, args.ls_output_len)))
    return ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running server's API root; without it qllm-serve is started here")
    parser.add_argument("--model", help="the served model's name (default: what the server lists)")
    parser.add_argument("--priority-convention", default="vllm", choices=["vllm", "sglang", "none"])
    parser.add_argument("--server-cpu", type=int, default=0, help="the core qllm-serve runs on")
    parser.add_argument("--client-cpu", type=int, default=1, help="the core this client runs on")
    parser.add_argument("--be-streams", type=int, default=16)
    parser.add_argument("--be-prompt-len", type=int, default=64)
    parser.add_argument("--be-output-len", type=int, default=1000)
    parser.add_argument("--ls-prompt-len", type=int, default=16)
    parser.add_argument("--ls-output-len", type=int, default=16)
    parser.add_argument("--settle-s", type=float, default=0.5, help="after every BE stream has its first token")
    parser.add_argument("--repeats", type=int, default=5, help="LS requests measured on the idle server, and on "
                        "the full batch while it stays full (medians)")
    parser.add_argument("overrides", nargs="*", help="qllm-serve overrides (default: model=small_mixtral engine=qllm)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {args.client_cpu})
    if args.base_url:
        run(args.base_url, args, f"server at {args.base_url}")
        return
    chosen = {override.split("=")[0] for override in args.overrides}
    defaults = [f"{group}={option}" for group, option in SERVER_DEFAULTS.items() if group not in chosen]
    overrides = [*defaults, *args.overrides]
    with ServerProcess(*overrides, "log_level=warning", cpu=args.server_cpu) as server:
        run(server.base_url, args, f"qllm-serve {' '.join(overrides)} on core {args.server_cpu}")


def run(base_url: str, args, what: str) -> None:
    client = Client(base_url, args.model, args.priority_convention)
    idle = idle_ttft_s(client, args)
    full = full_batch_ttfts_s(client, args)
    client.engine.close()  # the BE streams still running are cancelled: the server aborts them
    print(f"{what}; client on core {args.client_cpu}")
    print(f"LS request ({args.ls_prompt_len} prompt + {args.ls_output_len} output tokens) TTFT on the idle server: "
          f"{idle * 1e3:.1f} ms (median of {args.repeats})")  # fmt: skip
    print(f"LS TTFT with {args.be_streams} BE streams ({args.be_prompt_len} + {args.be_output_len} tokens) generating: "
          f"{statistics.median(full) * 1e3:.1f} ms (median of {len(full)} LS requests sent while every BE stream "
          f"was generating: {', '.join(f'{t * 1e3:.1f}' for t in full)} ms)")  # fmt: skip
    print(f"full batch / idle LS TTFT: {statistics.median(full) / idle:.2f}x  (goal <= {GOAL:g})")


if __name__ == "__main__":
    main()
