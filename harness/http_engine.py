"""`openai_http`: any OpenAI-compatible server (qllm-serve, vLLM, SGLang, ...) as an engine of a run.

`harness.replay` drives it like any engine, so requests go out open-loop at the trace's arrival
times: `submit` hands each request to an asyncio loop in a background thread, where every
request streams concurrently (httpx); `step` waits briefly for progress; `idle` is true once
every request has ended. Each token is recorded the moment its chunk arrives, on the run's
clock, so TTFT, ITL and e2e are the client's view; the client sees no quanta, so the timeline
is empty. A request that breaks (HTTP error, timeout, disconnect) is a `failed` row with the
reason; nothing is lost.

Threads: the recorder is written only from the loop thread; the replay thread reads it after
`idle()` (the count of ended requests is raised after each request's last event).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref

import httpx

from harness.openai_stream import StreamFailed, stream_completion
from harness.recorder import Recorder
from qllm.errors import ConfigurationError
from qllm.prompts import prompt_token_ids
from qllm.request import Request

PRIORITY_CONVENTIONS = ("vllm", "sglang", "none")


def priority_fields(request: Request, convention: str, sglang_priority_step: int) -> dict:
    """The request's priority (lower = more urgent in a trace) as the server reads it."""
    if convention == "vllm":  # vLLM and qllm-serve: lower = more urgent
        return {"priority": request.priority}
    if convention == "sglang":  # SGLang serves higher values first, preempting only above a threshold
        return {"priority": -request.priority * sglang_priority_step}
    return {}


class LoopThread:
    """An asyncio event loop running in a daemon thread, and the HTTP client that lives on it."""

    def __init__(self, timeout: httpx.Timeout) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="openai-http", daemon=True)
        self.thread.start()
        self.client = self.run(self._open(timeout)).result()

    async def _open(self, timeout: httpx.Timeout) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)  # open loop: no client-side cap
        return httpx.AsyncClient(timeout=timeout, limits=limits)

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        """Cancel what still runs (the server sees each as a disconnect), close the client, end the thread."""
        if not self.loop.is_running():
            return
        if threading.current_thread() is self.thread:  # collected from inside the loop: cannot wait on it
            self.loop.call_soon(self.loop.stop)
            return
        self.run(self._close()).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    async def _close(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()
        await self.loop.shutdown_asyncgens()  # the response streams the cancelled tasks left open


class OpenAIHttpEngine:
    """Streams each request from `base_url` (`/completions`) with token-id prompts and exact output lengths."""

    def __init__(self, events: Recorder, base_url: str, model: str | None = None, name: str = "openai_http",
                 priority_convention: str = "vllm", sglang_priority_step: int = 100, extra_body: dict | None = None,
                 max_concurrency: int | None = None, timeout_s: float | None = None, max_retries: int = 0,
                 retry_backoff_s: float = 1.0, prompt_vocab_size: int = 32000, poll_interval_s: float = 0.001):  # fmt: skip
        if priority_convention not in PRIORITY_CONVENTIONS:
            raise ConfigurationError(f"engine {name}: priority_convention {priority_convention!r}: expected one of "
                             f"{PRIORITY_CONVENTIONS}")  # fmt: skip
        logging.getLogger("httpx").setLevel(logging.WARNING)  # its line per request would bury the run's output
        self.name = name
        self.events = events
        self.base_url = base_url.rstrip("/")
        self.model = model or served_model(self.base_url)
        self.priority_convention = priority_convention
        self.sglang_priority_step = sglang_priority_step
        self.extra_body = dict(extra_body or {})
        self.timeout_s = timeout_s  # per request, from sending to the last token
        self.max_retries = max_retries  # resends of a request that failed before its first token
        self.retry_backoff_s = retry_backoff_s
        self.prompt_vocab_size = prompt_vocab_size  # stand-in prompt ids, as in-process engines draw them
        self.poll_interval_s = poll_interval_s  # the longest a step waits: bounds how late a submission is
        self._loop = LoopThread(httpx.Timeout(None, connect=30.0))
        self._finalizer = weakref.finalize(self, self._loop.stop)
        self._slots = self._loop.run(_semaphore(max_concurrency)).result()
        self._progress = threading.Event()  # set by the loop thread whenever a request ends
        self._num_submitted = 0  # written by the replay thread only
        self._num_ended = 0  # written by the loop thread only

    def body(self, request: Request) -> dict:
        """The completion request: the prompt as token ids, exactly output_len tokens, the priority."""
        return {
            "model": self.model,
            "prompt": prompt_token_ids(request, self.prompt_vocab_size),
            "max_tokens": request.output_len,
            "min_tokens": request.output_len,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **priority_fields(request, self.priority_convention, self.sglang_priority_step),
            **self.extra_body,
        }

    def submit(self, request: Request) -> None:
        self._num_submitted += 1
        self._loop.run(self._serve(request))

    def step(self) -> None:
        self._progress.wait(self.poll_interval_s)
        self._progress.clear()

    def idle(self) -> bool:
        return self._num_ended == self._num_submitted

    def close(self) -> None:
        """Stop now: requests still streaming are cancelled (recorded as failed)."""
        self._finalizer()

    async def _serve(self, request: Request) -> None:
        request_id = request.request_id
        try:
            if self._slots is None:
                await self._send_with_retries(request)
            else:
                async with self._slots:
                    await self._send_with_retries(request)
            self.events.finished(request_id)
        except StreamFailed as failure:
            self.events.failed(request_id, failure.reason)
        except asyncio.CancelledError:
            self.events.failed(request_id, "cancelled: the engine was closed before the request ended")
        except Exception as error:  # anything else is this request's failure too, never a lost row
            self.events.failed(request_id, f"{type(error).__name__}: {error}")
        finally:
            self._num_ended += 1
            self._progress.set()

    async def _send_with_retries(self, request: Request) -> None:
        url, body = f"{self.base_url}/completions", self.body(request)

        def record(token_ids: list[int]) -> None:
            for token_id in token_ids:
                self.events.tokens({request.request_id: token_id})

        for attempt in range(self.max_retries + 1):
            try:
                await asyncio.wait_for(stream_completion(self._loop.client, url, body, record), self.timeout_s)
                return
            except asyncio.TimeoutError:
                num_tokens = len(self.events.requests[request.request_id].token_s)
                raise StreamFailed(f"timed out after {self.timeout_s} s ({num_tokens} tokens received)") from None
            except StreamFailed as failure:
                if not failure.retryable or attempt == self.max_retries:
                    if attempt:
                        failure.reason += f" (after {attempt} retries)"
                    raise
                await asyncio.sleep(self.retry_backoff_s * 2**attempt)


async def _semaphore(limit: int | None) -> asyncio.Semaphore | None:
    """Made on the loop it guards."""
    return None if limit is None else asyncio.Semaphore(limit)


def served_model(base_url: str) -> str:
    """The first model the server lists at GET {base_url}/models."""
    try:
        response = httpx.get(f"{base_url}/models", timeout=30.0)
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
        raise ConfigurationError(f"openai_http: cannot read the served model from {base_url}/models ({error}); is the "
                         f"server running? Or name it: engine.openai_http.model=NAME") from error
