"""The HTTP API: FastAPI routes over the engine thread (OpenAI's endpoints, `/health`, `/metrics`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request as HTTPRequest, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from qllm.events import Clock
from qllm.server.completions import Completions
from qllm.server.engine_loop import EngineLoop
from qllm.server.errors import install_error_handlers
from qllm.server.metrics import ServerMetrics
from qllm.server.protocol import ChatCompletionRequest, CompletionRequest
from qllm.server.requests import RequestBuilder


async def until_disconnected(http_request: HTTPRequest) -> None:
    """Returns when the client closes its connection (the body has been read: only that can come)."""
    while (await http_request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(http_request: HTTPRequest, answer):
    """Await `answer` (a coroutine), cancelling it if the client disconnects first (as vLLM's
    `with_cancellation` does): the cancelled request is aborted and its KV freed."""
    answering = asyncio.ensure_future(answer)
    listening = asyncio.ensure_future(until_disconnected(http_request))
    await asyncio.wait([answering, listening], return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    if not answering.done():
        answering.cancel()
        return Response(status_code=499)  # nobody reads it: the client is gone (nginx's "client closed request")
    return answering.result()


def create_app(engine_loop: EngineLoop, builder: RequestBuilder, completions: Completions, metrics: ServerMetrics,
               clock: Clock) -> FastAPI:  # fmt: skip
    """The app; its lifespan starts and stops the engine thread."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine_loop.start()
        yield
        engine_loop.stop()

    app = FastAPI(title="qllm-serve", lifespan=lifespan)
    install_error_handlers(app)
    created = int(time.time())

    @app.get("/health")
    async def health() -> Response:
        if engine_loop.is_healthy:
            return Response(status_code=200)
        return JSONResponse({"error": f"the engine thread is not running: {engine_loop.error!r}"}, status_code=503)

    @app.get("/v1/models")
    async def models() -> dict:
        model = {"id": builder.model_name, "object": "model", "created": created, "owned_by": "qllm",
                 "max_model_len": builder.max_model_len}  # fmt: skip
        return {"object": "list", "data": [model]}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, http_request: HTTPRequest):
        request = builder.completion(body, f"cmpl-{uuid.uuid4().hex}", clock.now())
        return await unless_disconnected(http_request, completions.respond(request, body, is_chat=False))

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, http_request: HTTPRequest):
        request = builder.chat(body, f"chatcmpl-{uuid.uuid4().hex}", clock.now())
        return await unless_disconnected(http_request, completions.respond(request, body, is_chat=True))

    return app
