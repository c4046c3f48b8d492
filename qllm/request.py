"""One request, as an engine receives it: lengths, priority class and priority."""

from __future__ import annotations

from dataclasses import dataclass

LS, BE = "LS", "BE"  # latency-sensitive, best-effort
PRIORITY_CLASSES = (LS, BE)
DEFAULT_PRIORITY = {LS: 0, BE: 1}  # lower = more urgent (vLLM's convention)


@dataclass(frozen=True)
class Request:
    request_id: str
    arrival_s: float  # seconds from trace start
    prompt_len: int  # prompt tokens
    output_len: int  # tokens to generate; EOS is ignored
    priority_class: str  # LS (latency-sensitive) or BE (best-effort)
    priority: int  # lower = more urgent (vLLM's convention)
    prompt_ids: tuple[int, ...] | None = None  # real prompt token ids, when the trace has them

    @property
    def is_latency_sensitive(self) -> bool:
        return self.priority_class == LS
