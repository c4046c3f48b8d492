"""The OpenAI API's request bodies as `qllm-serve` reads them, with vLLM's extensions where vLLM
has one (`min_tokens`, `ignore_eos`, `priority`, `return_token_ids`), and the bodies it answers.

Decoding is greedy. Fields of other servers (`temperature`, `top_p`, `stop`, ...) are accepted
and ignored, as vLLM ignores fields it does not know, so any load generator can talk to it.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qllm.request import PRIORITY_CLASSES

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the OpenAI completions API's default


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with the token counts (and no choices)


class GenerationFields(BaseModel):
    """What both endpoints share: how long to generate, priority, and how to answer."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)  # None: the endpoint's default
    min_tokens: int = Field(0, ge=0)  # the end-of-sequence token does not stop generation before this many
    ignore_eos: bool = False  # generate exactly max_tokens tokens (what benchmarks use)
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: int | None = None  # lower = more urgent (vLLM's convention); its class comes from the server's config
    priority_class: Literal[PRIORITY_CLASSES] | None = None  # LS or BE, overriding what `priority` maps to
    return_token_ids: bool = False  # add the generated token ids (`token_ids`) to each choice, as vLLM does
    n: int = Field(1, ge=1, le=1)  # one choice per request

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(GenerationFields):
    # text, or token ids; a list holding one of those is one prompt too
    prompt: str | list[int] | list[str] | list[list[int]]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_choice(text: str, finish_reason: str | None, token_ids: list[int] | None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return choice if token_ids is None else {**choice, "token_ids": token_ids}


def chat_choice(content: str, finish_reason: str | None, token_ids: list[int] | None, is_delta: bool,
                is_first: bool = False) -> dict:  # fmt: skip
    """A chat choice: the whole `message`, or a stream's `delta` (the first one names the role)."""
    if is_delta:
        body = {"delta": {"role": "assistant", "content": content} if is_first else {"content": content}}
    else:
        body = {"message": {"role": "assistant", "content": content}}
    choice = {"index": 0, **body, "logprobs": None, "finish_reason": finish_reason}
    return choice if token_ids is None else {**choice, "token_ids": token_ids}


def response_body(request_id: str, object_name: str, model: str, choices: list[dict], usage_counts: dict | None) -> dict:
    """A response (`text_completion`, `chat.completion`) or one stream chunk (`...chunk`)."""
    body = {"id": request_id, "object": object_name, "created": int(time.time()), "model": model, "choices": choices}
    return body if usage_counts is None else {**body, "usage": usage_counts}
