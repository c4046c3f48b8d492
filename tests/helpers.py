"""What the tests share: the real config (composed as `qllm-bench` composes it, then shrunk), a
step clock, engines built from that config and replayed through `harness.replay`, and the oracle
(`model.generate` on each request alone)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
from omegaconf import DictConfig, OmegaConf
from prometheus_client.parser import text_string_to_metric_families

from baselines.hf_generate import greedy_generate
from harness.app import CONF_DIR
from harness.engines import RunResources
from harness.recorder import Recorder
from harness.replay import replay
from harness.traces.workload import PROJECT_ROOT
from qllm.prompts import prompt_token_ids
from qllm.events import Quantum
from qllm.executor import ForwardPass
from qllm.request import DEFAULT_PRIORITY, Request

REMOTE_ENGINES = ("openai_http",)  # need a server to talk to: tests/test_server.py starts one
ENGINES = sorted(path.stem for path in (CONF_DIR / "engine").glob("*.yaml") if path.stem not in REMOTE_ENGINES)
# A model small enough for hundreds of runs, every engine, no warm-up, no progress bar.
SHRINK = (
    "model.config.vocab_size=512",
    "model.config.hidden_size=64",
    "model.config.intermediate_size=96",
    "model.config.num_hidden_layers=3",
    "model.config.num_local_experts=4",
    "model.config.max_position_embeddings=256",
    "warmup_tokens=0",
    "progress=false",
    f"engine=[{','.join(ENGINES)}]",
)


# The app on a tiny model that still takes the shipped traces' token ids (Mixtral's vocabulary).
APP_SHRINK = (
    "model.config.vocab_size=32000",
    "model.config.num_hidden_layers=2",
    "model.config.max_position_embeddings=256",
    "progress=false",
)
# qllm-serve on the app's tiny model (APP_SHRINK's model, with room for long generations): the
# same weights as an in-process run composed with APP_SHRINK and SERVE_CONTEXT.
SERVE_CONTEXT = "model.config.max_position_embeddings=1024"
SERVE_SHRINK = (*(o for o in APP_SHRINK if o.startswith("model.")), SERVE_CONTEXT, "log_level=warning")
SERVED_MODEL = "tiny_mixtral"
# A sweep point that runs in about a second: 1 layer, 6 short requests, half of them LS.
TINY_SWEEP = (
    "engine=[qllm,fcfs_rtc]", "model.config.num_hidden_layers=1", "trace.num_requests=6",
    "trace.max_prompt_len=16", "trace.max_output_len=3", "trace.ls_fraction=0.5", "warmup_tokens=0", "torch_threads=1",
    "progress=false",
)  # fmt: skip


def run_cli(*args: str, module: str = "harness.app", expect_ok: bool = True, env: dict | None = None):
    """A console script's module (`qllm-bench` by default) in a fresh process, as a user runs it,
    from the repository root; `env` adds to the environment. Returns the CompletedProcess."""
    environment = {**os.environ, **(env or {})}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=600, env=environment)  # fmt: skip
    if expect_ok:
        assert done.returncode == 0, f"{module} {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def engine_config(cfg: DictConfig, name: str, **overrides) -> DictConfig:
    """A copy of engine `name`'s config with `overrides` by dotted key (`__` for `.`), each value
    replacing the node: policy__max_batch_size=3, checkpoint_policy={"_target_": ...}."""
    engine_cfg = OmegaConf.create(OmegaConf.to_container(cfg.engine[name], resolve=True))
    for key, value in overrides.items():
        OmegaConf.update(engine_cfg, key.replace("__", "."), value, merge=False)
    return engine_cfg


class StepClock:
    """Time in engine steps: deterministic, so a test decides exactly where arrivals fall."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep_until(self, t_s: float) -> None:
        self.t = max(self.t, t_s)

    def start_replay(self, arrival_s) -> None:
        """Steps pass one by one: nothing to prepare."""


class Stepped:
    """An engine whose every step takes one unit of a StepClock: a step started at t occupies [t, t + 1)."""

    def __init__(self, engine, clock: StepClock) -> None:
        self.engine = engine
        self.clock = clock
        self.name = engine.name

    def submit(self, request: Request) -> None:
        self.engine.submit(request)

    def idle(self) -> bool:
        return self.engine.idle()

    def step(self) -> None:
        self.engine.step()
        self.clock.t += 1


class TimedExecutor:
    """An executor whose passes take time on a StepClock: each stage up to a checkpoint costs
    `cost(checkpoint)`, the last stage (norm and LM head) `cost(None)`. Unlike `Stepped`, time then
    passes inside quanta, so run_s and the checkpoint policies' estimates see it."""

    def __init__(self, executor, clock: StepClock, cost) -> None:
        self.executor = executor
        self.clock = clock
        self.cost = cost

    def __getattr__(self, name: str):
        return getattr(self.executor, name)

    def forward(self, batch, may_stop=None):
        return self._wrapped(self.executor.forward(batch, may_stop))

    def catch_up(self, batch, num_layers, may_stop=None):
        return self._wrapped(self.executor.catch_up(batch, num_layers, may_stop))

    def _wrapped(self, forward_pass):
        return ForwardPass(self._timed(forward_pass), forward_pass.state)  # reporting what the pass it times holds

    def _timed(self, forward_pass):
        """`forward_pass` with time passing in each stage; what the engine sends (caught-up rows) goes through."""
        sent = None
        while True:
            try:
                checkpoint, sent = forward_pass.send(sent), None
            except StopIteration as done:
                self.clock.t += self.cost(None)
                return done.value
            self.clock.t += self.cost(checkpoint)
            sent = yield checkpoint


def replay_timed(resources: RunResources, engine_cfg: DictConfig, requests: list[Request], cost=lambda c: 1.0,
                 name: str = "qllm"):  # fmt: skip
    """Replay `requests` through `harness.replay` with time passing inside quanta (TimedExecutor)."""
    clock = StepClock()
    recorder = Recorder(clock)
    timed = RunResources(resources.cfg, model=resources.model)
    timed.executor = lambda **kwargs: TimedExecutor(resources.executor(**kwargs), clock, cost)
    replay(requests, timed.build_engine(engine_cfg, name, clock, recorder), recorder, progress=False)
    return recorder


def make_request(i: int, prompt_len: int, output_len: int, priority_class: str, arrival_s: float) -> Request:
    return Request(f"r{i}", arrival_s, prompt_len, output_len, priority_class, DEFAULT_PRIORITY[priority_class])


def requests_of(specs) -> list[Request]:
    """Requests r0, r1, ... from (prompt_len, output_len, class, arrival step) tuples."""
    return [make_request(i, p, o, c, float(a)) for i, (p, o, c, a) in enumerate(specs)]


def replay_on_steps(resources: RunResources, engine_cfg: DictConfig, requests: list[Request], name: str = "qllm"):
    """Replay `requests` through `harness.replay` on a StepClock; returns the recorder."""
    clock = StepClock()
    recorder = Recorder(clock)
    engine = resources.build_engine(engine_cfg, name, clock, recorder)
    replay(requests, Stepped(engine, clock), recorder, progress=False)
    return recorder


def oracle_tokens(model, request: Request) -> list[int]:
    """`model.generate` greedy output for the request alone."""
    prompt = prompt_token_ids(request, model.config.vocab_size)
    return greedy_generate(model, [prompt], request.output_len)[0]


def assert_matches_oracle(model, recorder: Recorder, requests: list[Request]) -> None:
    for request in requests:
        events = recorder.requests[request.request_id]
        assert events.rejected_reason is None and events.finish_s is not None, request
        assert events.token_ids == oracle_tokens(model, request), request


def ls_waits(timeline, requests, recorder) -> dict[str, list]:
    """Per LS request, the BE-only quanta that ran between its arrival and its first scheduling.

    StepClock: a step started at t occupies [t, t + 1), so an arrival at t + 0.5 lands while
    that step's quantum runs; the engine sees it at the next step."""
    be_only = timeline[timeline["num_ls"] == 0]
    waits = {}
    for request in requests:
        if request.priority_class != "LS":
            continue
        arrival_s, scheduled_s = request.arrival_s, recorder.requests[request.request_id].first_scheduled_s
        overlapping = (be_only["t_start_s"] + 1 > arrival_s) & (be_only["t_start_s"] < scheduled_s)
        waits[request.request_id] = list(be_only[overlapping].itertuples())
    return waits


# A hand-made run whose every metric is known exactly (tests/test_metrics.py says what each is).
SLO = {"LS": {"ttft_s": 3.0}, "BE": {"ttft_s": None, "tpot_s": 4.0}}


def request(rid: str, cls: str, arrival_s: float, output_len: int) -> Request:
    priority = 0 if cls == "LS" else 1
    return Request(rid, arrival_s, prompt_len=4, output_len=output_len, priority_class=cls, priority=priority)


REQUESTS = [
    request("a", "LS", 0.0, 3),  # preempted once; meets its TTFT SLO
    request("b", "LS", 0.5, 2),  # TTFT 3.5 misses the 3 s SLO
    request("c", "BE", 1.0, 2),  # long suspension; meets the BE TPOT SLO
    request("d", "BE", 2.0, 5),  # rejected
    request("e", "LS", 3.0, 2),  # still running when the run ended
]


def recorded_run() -> Recorder:
    clock = StepClock()
    rec = Recorder(clock)
    events = [
        (0.5, "scheduled", "a"),  # metrics count from the trace arrival 0.0, not from when work began
        (1.0, "tokens", {"a": 11}), (1.0, "scheduled", "b"),
        (1.1, "scheduled", "c"), (1.2, "tokens", {"c": 31}),
        (1.2, "preempted", ["a"]), (1.4, "resumed", ["a"]),
        (1.5, "tokens", {"a": 12}), (1.5, "preempted", ["c"]),
        (2.0, "rejected", "d"),
        (2.5, "tokens", {"a": 13}), (2.5, "finished", "a"),
        (3.0, "resumed", ["c"]), (3.2, "scheduled", "e"),
        (3.4, "tokens", {"e": 51}),
        (4.0, "tokens", {"b": 21}), (4.5, "tokens", {"b": 22}), (4.5, "finished", "b"),
        (5.0, "tokens", {"c": 32}), (5.0, "finished", "c"),
    ]  # fmt: skip
    for t, what, arg in events:
        clock.t = t
        if what == "rejected":
            rec.rejected(arg, "prompt longer than the context")
        else:
            getattr(rec, what)(arg)
    rec.quantum(Quantum(1.0, 1.5, "decode", ("a", "c"), num_tokens=2, layer=3, expert=1, is_resume=True))
    rec.quantum(Quantum(1.5, 2.5, "prefill", ("b",), num_tokens=4))
    return rec


def server_metrics(url: str) -> dict[tuple[str, tuple], float]:
    """A server's /metrics, parsed by prometheus_client: {(sample name, sorted labels): value}."""
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}  # fmt: skip


def aborted(metrics: dict) -> float:
    """Requests the server aborted because their client went away (server_metrics' dict)."""
    return sum(value for (name, labels), value in metrics.items()
               if name == "qllm:requests_total" and ("status", "aborted") in labels)  # fmt: skip


def generated(metrics: dict) -> float:
    """Tokens the server's engine generated, for any request (server_metrics' dict)."""
    return metrics[("qllm:generation_tokens_total", ())]


def is_drained(metrics: dict) -> bool:
    """Nothing queued, running or suspended on the server, and no KV held (server_metrics' dict)."""
    gauges = ("qllm:num_requests_waiting", "qllm:num_running_batches", "qllm:num_suspended_batches",
              "qllm:kv_cache_allocated_bytes", "qllm:kv_cache_reserved_bytes")  # fmt: skip
    return all(value == 0 for (name, _), value in metrics.items() if name in gauges)


def wait_for(condition, timeout_s: float = 20.0) -> None:
    """Poll `condition()` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout_s} s: {condition}"
        time.sleep(0.05)
