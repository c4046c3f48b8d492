"""`hf_generate`: FCFS static batches run to completion through Hugging Face `model.generate`.

Written by nobody here but Hugging Face, so it keeps every other engine honest: it is the
paper's style of baseline and, run one request at a time, the correctness oracle.
"""

from __future__ import annotations

from collections import deque

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from qllm.events import Clock, EventSink, Quantum
from qllm.prompts import prompt_token_ids, rejection_reason
from qllm.request import Request


def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, stopping_criteria=None) -> list[list[int]]:
    """Greedy continuations of left-padded `prompts`, EOS ignored: exactly `max_new_tokens` each."""
    pad_id = 0
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,  # benchmarks ignore EOS: every request generates its output_len tokens
            pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList(stopping_criteria or []),
        )
    return output[:, width:].tolist()


class _TokenTimer(StoppingCriteria):
    """Reports each generation step as it happens; never stops generation."""

    def __init__(self, batch: list[Request], clock: Clock, events: EventSink) -> None:
        self.batch = batch
        self.clock = clock
        self.events = events
        self.t_last_s = clock.now()
        self.num_steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.num_steps += 1
        new_tokens = input_ids[:, -1].tolist()
        # Rows past their own output length keep running (a static batch's waste) but report nothing.
        live = {r.request_id: new_tokens[i] for i, r in enumerate(self.batch) if r.output_len >= self.num_steps}
        self.events.tokens(live)
        for r in self.batch:
            if r.output_len == self.num_steps:
                self.events.finished(r.request_id)
        t_now = self.clock.now()
        is_prefill = self.num_steps == 1
        self.events.quantum(
            Quantum(
                t_start_s=self.t_last_s,
                t_end_s=t_now,
                kind="prefill" if is_prefill else "decode",
                request_ids=tuple(r.request_id for r in self.batch),
                num_tokens=sum(r.prompt_len for r in self.batch) if is_prefill else len(self.batch),
            )
        )
        self.t_last_s = t_now
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HFGenerateEngine:
    """FCFS: take up to `max_batch_size` waiting requests, generate until the longest is done."""

    def __init__(
        self, model, clock: Clock, events: EventSink, max_batch_size: int = 8, name: str = "hf_generate"
    ) -> None:
        self.model = model
        self.clock = clock
        self.events = events
        self.max_batch_size = max_batch_size
        self.name = name
        self.waiting: deque[Request] = deque()

    def submit(self, request: Request) -> None:
        reason = rejection_reason(request, self.model.config)
        if reason is not None:
            self.events.rejected(request.request_id, reason)
            return
        self.waiting.append(request)

    def idle(self) -> bool:
        return not self.waiting

    def step(self) -> None:
        """One static batch, run to completion: not preemptible."""
        batch = [self.waiting.popleft() for _ in range(min(self.max_batch_size, len(self.waiting)))]
        for request in batch:
            self.events.scheduled(request.request_id)
        vocab_size = self.model.config.vocab_size
        prompts = [prompt_token_ids(r, vocab_size) for r in batch]
        timer = _TokenTimer(batch, self.clock, self.events)
        greedy_generate(self.model, prompts, max(r.output_len for r in batch), stopping_criteria=[timer])
