"""Serving one request: submit it to the engine thread, read its tokens as they come, and answer
with one JSON body or a stream of Server-Sent Events in the OpenAI chunk format.

Every way a request can end early goes through one `finally`: a client that disconnects (its
handler is cancelled), an end-of-sequence token before `max_tokens`, or an error; each asks the
engine thread to abort it, which frees its KV.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sse_starlette.sse import EventSourceResponse

from qllm.request import Request
from qllm.server.engine_loop import EngineLoop
from qllm.server.protocol import GenerationFields, chat_choice, completion_choice, response_body, usage
from qllm.server.streams import RequestStream
from qllm.server.tokenizer import Tokenizer


@dataclass(frozen=True)
class Output:
    """One generated token as the client sees it."""

    token_id: int
    text: str  # what it adds to the text ("" while a character is incomplete, and for the end-of-sequence token)
    finish_reason: str | None  # "length" (max_tokens reached), "stop" (end-of-sequence token), or None


class Completions:
    """Runs requests on the engine thread and answers them, for both endpoints."""

    def __init__(self, engine_loop: EngineLoop, tokenizer: Tokenizer | None, eos_token_id: int | list[int] | None,
                 model_name: str) -> None:  # fmt: skip
        self.engine_loop = engine_loop
        self.tokenizer = tokenizer
        # the model config's end-of-sequence token: one id, several, or none
        self.eos_token_ids = set(eos_token_id) if isinstance(eos_token_id, list) else {eos_token_id} - {None}
        self.model_name = model_name

    async def outputs(self, request: Request, body: GenerationFields) -> AsyncIterator[Output]:
        """Submit `request` and yield its tokens; a request left unfinished is aborted."""
        stream = RequestStream(request, asyncio.get_running_loop())
        detokenizer = self.tokenizer.detokenizer(list(request.prompt_ids)) if self.tokenizer else None
        self.engine_loop.submit(stream)
        num_tokens, end = 0, "aborted"
        try:
            async for token_id in stream.token_ids():
                num_tokens += 1
                if not body.ignore_eos and token_id in self.eos_token_ids and num_tokens >= body.min_tokens:
                    end = "stopped"
                    yield Output(token_id, "", "stop")
                    return
                text = detokenizer.add(token_id) if detokenizer else ""
                yield Output(token_id, text, "length" if num_tokens == request.output_len else None)
        finally:
            if not stream.has_ended:
                self.engine_loop.abort(request.request_id, end)

    async def respond(self, request: Request, body: GenerationFields, is_chat: bool):
        """The response: a JSON body, or an event stream once the first token is there (so a
        request the engine rejects still gets its 400)."""
        outputs = self.outputs(request, body)
        first = await anext(outputs, None)
        if body.stream:
            return EventSourceResponse(self._events(request, body, is_chat, first, outputs), sep="\n")
        collected = [first] if first is not None else []
        collected += [output async for output in outputs]
        token_ids = [o.token_id for o in collected]
        text = "".join(o.text for o in collected)
        finish_reason = collected[-1].finish_reason if collected else None
        ids = token_ids if body.return_token_ids else None
        choice = chat_choice(text, finish_reason, ids, is_delta=False) if is_chat else completion_choice(text, finish_reason, ids)
        object_name = "chat.completion" if is_chat else "text_completion"
        counts = usage(request.prompt_len, len(collected))
        return response_body(request.request_id, object_name, self.model_name, [choice], counts)

    async def _events(self, request: Request, body: GenerationFields, is_chat: bool, first: Output | None,
                      outputs: AsyncIterator[Output]) -> AsyncIterator[dict]:  # fmt: skip
        """One chunk per token, a usage chunk when asked for, then [DONE]."""
        object_name = "chat.completion.chunk" if is_chat else "text_completion"
        num_tokens = 0
        try:
            pending = [first] if first is not None else []
            async for output in _chain(pending, outputs):
                ids = [output.token_id] if body.return_token_ids else None
                if is_chat:
                    choice = chat_choice(output.text, output.finish_reason, ids, is_delta=True, is_first=num_tokens == 0)
                else:
                    choice = completion_choice(output.text, output.finish_reason, ids)
                num_tokens += 1
                yield {"data": json.dumps(response_body(request.request_id, object_name, self.model_name, [choice], None))}
            if body.include_usage:
                counts = usage(request.prompt_len, num_tokens)
                yield {"data": json.dumps(response_body(request.request_id, object_name, self.model_name, [], counts))}
            yield {"data": "[DONE]"}
        finally:
            await outputs.aclose()  # a client gone mid-stream: abort now, not when the generator is collected


async def _chain(first: list[Output], rest: AsyncIterator[Output]) -> AsyncIterator[Output]:
    for output in first:
        yield output
    async for output in rest:
        yield output
