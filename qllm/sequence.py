"""A request as the engine tracks it: its tokens, its KV cache and where it is in its life."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from qllm.kv import SequenceKV
from qllm.request import Request


class SequenceStatus(enum.IntEnum):
    """Where a sequence is; the source of truth. Ordered: every state from FINISHED on is final."""

    WAITING = 0  # submitted, waiting for memory to be admitted
    QUEUED = 1  # admitted, in the scheduling policy's queues, ready for its next pass
    RUNNING = 2  # in the batch being executed
    SUSPENDED = 3  # its batch was preempted mid forward pass
    FINISHED = 4  # generated its last token
    ABORTED = 5  # dropped before its last token (its client went away)


@dataclass(eq=False)
class Sequence:
    request: Request
    prompt_ids: list[int]
    kv: SequenceKV  # this sequence's own keys and values, every layer
    output_ids: list[int] = field(default_factory=list)  # generated tokens, appended by the engine
    status: SequenceStatus = SequenceStatus.WAITING
    ready_s: float = 0.0  # when it last became ready for a pass (arrival, its previous token) or was set aside
    is_promoted: bool = False  # a BE sequence that aged past its bound and is now served as LS

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_cached_tokens(self) -> int:
        """Tokens whose keys and values are committed in `kv`."""
        return self.kv.num_tokens

    @property
    def num_new_tokens(self) -> int:
        """Tokens the next forward pass feeds: the whole prompt at prefill, the last token at decode."""
        return self.num_tokens - self.num_cached_tokens

    @property
    def new_token_ids(self) -> list[int]:
        """The tokens the next forward pass feeds (`num_new_tokens` of them)."""
        num_cached, num_prompt = self.num_cached_tokens, len(self.prompt_ids)
        if num_cached >= num_prompt:
            return self.output_ids[num_cached - num_prompt :]
        return self.prompt_ids[num_cached:] + self.output_ids

    @property
    def is_prefill(self) -> bool:
        return self.num_cached_tokens == 0

    @property
    def has_all_tokens(self) -> bool:
        return len(self.output_ids) >= self.request.output_len

    @property
    def order(self) -> tuple:
        """vLLM's request order: priority, then arrival, then id (smaller first)."""
        return (self.request.priority, self.request.arrival_s, self.request.request_id)

    @property
    def is_urgent(self) -> bool:
        """Served with LS priority: an LS request, or a promoted BE one."""
        return self.request.is_latency_sensitive or self.is_promoted
