"""A `qllm-serve` in a child process on a free port, as a user starts it, for tests and benchmarks
that measure it over HTTP (with the `openai_http` engine)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from harness.traces.workload import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`with ServerProcess("model=tiny_mixtral", cpu=0) as server:` ... `server.base_url` ...; the
    server is stopped (SIGTERM, then SIGKILL) when the block ends."""

    def __init__(self, *overrides: str, cpu: int | None = None, startup_timeout_s: float = 300.0) -> None:
        self.port = free_port()
        self.overrides = (*overrides, f"port={self.port}")
        self.cpu = cpu  # pin the server to this core (and its engine thread with it)
        self.startup_timeout_s = startup_timeout_s
        self.log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What OpenAI clients are given: the API root."""
        return f"{self.url}/v1"

    def __enter__(self) -> ServerProcess:
        pin = (lambda: os.sched_setaffinity(0, {self.cpu})) if self.cpu is not None else None
        self.process = subprocess.Popen([sys.executable, "-m", "qllm.server", *self.overrides], cwd=PROJECT_ROOT,
                                        stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=pin)  # fmt: skip
        self._wait_until_healthy()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def output(self) -> str:
        """What the server printed so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"qllm-serve exited with status {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"qllm-serve was not healthy within {self.startup_timeout_s} s:\n{self.output()[-3000:]}")
