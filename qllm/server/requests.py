"""From a request body to the engine's `Request`: the prompt's token ids, the output length, the
priority class, and every check that would make the engine reject it, answered as a 400 first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qllm.request import BE, DEFAULT_PRIORITY, LS, Request
from qllm.server.errors import APIError
from qllm.server.protocol import (
    COMPLETIONS_DEFAULT_MAX_TOKENS, ChatCompletionRequest, CompletionRequest, GenerationFields,
)
from qllm.server.tokenizer import Tokenizer


@dataclass(frozen=True)
class PriorityMapping:
    """How a request's `priority` (lower = more urgent) picks its class: LS up to `ls_max_priority`."""

    ls_max_priority: int = 0

    def classify(self, body: GenerationFields) -> tuple[str, int]:
        """(priority class, priority): an explicit `priority_class` wins; without either field, BE."""
        if body.priority_class is not None:
            priority = DEFAULT_PRIORITY[body.priority_class] if body.priority is None else body.priority
            return body.priority_class, priority
        if body.priority is None:
            return BE, DEFAULT_PRIORITY[BE]
        return (LS if body.priority <= self.ls_max_priority else BE), body.priority


class RequestBuilder:
    """Checks a body against the served model and engine and builds the engine's request."""

    def __init__(self, model_name: str, model_config, rejection_reason: Callable[[Request], str | None],
                 tokenizer: Tokenizer | None, priorities: PriorityMapping) -> None:  # fmt: skip
        self.model_name = model_name
        self.model_config = model_config  # the model's Hugging Face config: context length, vocabulary
        self.rejection_reason = rejection_reason  # the engine's: why a request can never be served
        self.tokenizer = tokenizer
        self.priorities = priorities

    @property
    def max_model_len(self) -> int:
        return self.model_config.max_position_embeddings

    def completion(self, body: CompletionRequest, request_id: str, arrival_s: float) -> Request:
        prompt_ids = self._prompt_ids(body.prompt)
        return self._request(body, prompt_ids, body.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS, request_id, arrival_s)

    def chat(self, body: ChatCompletionRequest, request_id: str, arrival_s: float) -> Request:
        messages = [message.model_dump() for message in body.messages]
        try:
            prompt_ids = self._need_tokenizer("chat messages").encode_chat(messages)
        except ValueError as error:
            raise APIError(str(error), param="messages") from error
        # Without a limit, the reply may fill the rest of the context (as vLLM does).
        max_tokens = body.max_completion_tokens or body.max_tokens or max(self.max_model_len - len(prompt_ids), 1)
        return self._request(body, prompt_ids, max_tokens, request_id, arrival_s)

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) > 1:
                raise APIError(f"one prompt per request; got a batch of {len(prompt)}", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            prompt = self._need_tokenizer("text prompts").encode(prompt) if prompt else []
        if not prompt:
            raise APIError("prompt is empty: give text or at least one token id", param="prompt")
        return list(prompt)

    def _need_tokenizer(self, what: str) -> Tokenizer:
        if self.tokenizer is None:
            raise APIError(f"this server has no tokenizer (~tokenizer), so it cannot read {what}: "
                           f"send a prompt of token ids to /v1/completions", param="prompt")  # fmt: skip
        return self.tokenizer

    def _request(self, body: GenerationFields, prompt_ids: list[int], max_tokens: int, request_id: str,
                 arrival_s: float) -> Request:  # fmt: skip
        if body.model != self.model_name:
            raise APIError(f"model {body.model!r} is not served here; this server serves {self.model_name!r} "
                           f"(GET /v1/models)", param="model")  # fmt: skip
        if body.min_tokens > max_tokens:
            raise APIError(f"min_tokens ({body.min_tokens}) is larger than max_tokens ({max_tokens})", param="min_tokens")
        priority_class, priority = self.priorities.classify(body)
        request = Request(request_id, arrival_s, len(prompt_ids), max_tokens, priority_class, priority, tuple(prompt_ids))
        # The checks the engine makes at submission (context, vocabulary, memory budget), answered now.
        reason = self.rejection_reason(request)
        if reason is not None:
            raise APIError(f"this request cannot be served: {reason}")
        return request
