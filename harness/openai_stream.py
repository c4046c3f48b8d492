"""One streamed completion from an OpenAI-compatible server: send the body, read its Server-Sent
Events, and report each token the moment its chunk arrives."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

UNKNOWN_TOKEN_ID = -1  # a chunk without `token_ids` (a server without vLLM's return_token_ids): one token, id unknown


class StreamFailed(Exception):
    """The request broke: `reason` says how, `num_tokens` what had arrived; `retryable` when it
    failed before any token for a reason worth another try (connection, 429, 5xx)."""

    def __init__(self, reason: str, num_tokens: int = 0, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.num_tokens = num_tokens
        self.retryable = retryable and num_tokens == 0


def error_message(body: bytes) -> str:
    """The message of an OpenAI-style error body, else the body's start."""
    try:
        error = json.loads(body).get("error")
        return error.get("message", str(error)) if isinstance(error, dict) else str(error or body[:200])
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def chunk_token_ids(chunk: dict) -> list[int]:
    """The tokens one chunk carries: its choices' `token_ids`, else one unknown token per choice
    that carries text or is still going (the usage chunk carries none)."""
    token_ids = []
    for choice in chunk.get("choices") or []:
        if choice.get("token_ids") is not None:
            token_ids += choice["token_ids"]
        elif choice.get("text") or choice.get("finish_reason") is None:
            token_ids.append(UNKNOWN_TOKEN_ID)
    return token_ids


async def stream_completion(client: httpx.AsyncClient, url: str, body: dict,
                            on_tokens: Callable[[list[int]], None]) -> int:  # fmt: skip
    """POST `body` (with stream=True) and call `on_tokens` with each chunk's tokens as it arrives;
    returns the number of tokens, or raises StreamFailed."""
    num_tokens, finish_reason = 0, None
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                message = error_message(await response.aread())
                retryable = response.status_code == 429 or response.status_code >= 500
                raise StreamFailed(f"HTTP {response.status_code}: {message}", retryable=retryable)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and ": ping" comments
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return num_tokens
                chunk = json.loads(data)
                if "error" in chunk:
                    raise StreamFailed(f"error event after {num_tokens} tokens: {error_message(data.encode())}",
                                       num_tokens)  # fmt: skip
                token_ids = chunk_token_ids(chunk)
                if token_ids:
                    num_tokens += len(token_ids)
                    on_tokens(token_ids)
                finish_reason = next((c["finish_reason"] for c in chunk.get("choices") or [] if c.get("finish_reason")),
                                     finish_reason)  # fmt: skip
    except httpx.HTTPError as error:
        retryable = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
        raise StreamFailed(f"{type(error).__name__} after {num_tokens} tokens: {error}", num_tokens, retryable) from error
    except json.JSONDecodeError as error:
        raise StreamFailed(f"a chunk is not JSON after {num_tokens} tokens: {error}", num_tokens) from error
    if finish_reason is None:
        raise StreamFailed(f"the stream ended after {num_tokens} tokens without a finish reason or [DONE]", num_tokens)
    return num_tokens
