"""`QLLMEngine`: continuous batching on the real executor; a policy picks batches and preemptions.

One `step()` runs one quantum: up to the next checkpoint of the running batch's forward pass
(a decoder layer with `layer` granularity, the whole pass with `iteration`). At each checkpoint
the checkpoint policy may set the running batch aside; its generator keeps the pass's state, so
resuming recomputes nothing.
"""

from __future__ import annotations

from harness.recorder import Quantum, Recorder
from harness.request import Request
from qllm.batch import Batch
from qllm.executor import Executor
from qllm.policies.protocol import SchedulingPolicy
from qllm.preemption import CheckpointPolicy, CheckpointState, NeverPreempt, WaitingRequest
from qllm.prompts import prompt_token_ids
from qllm.sequence import Sequence, SequenceStatus


class QLLMEngine:
    def __init__(
        self,
        model,
        recorder: Recorder,
        policy: SchedulingPolicy,
        checkpoint_policy: CheckpointPolicy | None = None,
        granularity: str = "layer",
        name: str = "qllm",
    ):
        self.executor = Executor(model, granularity=granularity)
        self.recorder = recorder
        self.policy = policy
        self.checkpoint_policy = checkpoint_policy or NeverPreempt()
        self.name = name
        self.context_len = model.config.max_position_embeddings
        self.vocab_size = model.config.vocab_size
        self.running: Batch | None = None
        self.suspended: list[Batch] = []  # preempted batches, oldest first

    def submit(self, request: Request) -> None:
        reason = self._rejection_reason(request)
        if reason is not None:
            self.recorder.rejected(request.request_id, reason)
            return
        prompt = prompt_token_ids(request, self.vocab_size)
        kv = self.executor.new_kv()
        self.policy.add(Sequence(request=request, prompt_ids=prompt, kv=kv, ready_s=request.arrival_s))

    def _rejection_reason(self, request: Request) -> str | None:
        if request.prompt_len + request.output_len > self.context_len:
            return (
                f"prompt ({request.prompt_len}) + output ({request.output_len}) tokens exceed "
                f"the model's context of {self.context_len}"
            )
        if request.prompt_ids is not None and max(request.prompt_ids) >= self.vocab_size:
            return f"prompt token id {max(request.prompt_ids)} is outside the model's vocabulary of {self.vocab_size}"
        return None

    def idle(self) -> bool:
        return self.running is None and not self.suspended and not self.policy.has_waiting()

    def step(self) -> None:
        running = self.running
        if running is not None and running.checkpoint is not None and self.policy.has_waiting():
            if self.checkpoint_policy.should_preempt(self._checkpoint_state(running)):
                self._suspend(running)
        if self.running is None:
            self.running = self._next_batch()
        if self.running is not None:
            self._run_quantum(self.running)

    def _checkpoint_state(self, batch: Batch) -> CheckpointState:
        now_s = self.recorder.now()
        waiting = tuple(
            WaitingRequest(
                request_id=s.request_id,
                priority_class=s.request.priority_class,
                is_urgent=s.is_urgent,
                is_prefill=s.is_prefill,
                waited_s=now_s - s.request.arrival_s,
                queued_s=now_s - s.ready_s,
            )
            for s in self.policy.waiting(now_s)
        )
        return CheckpointState(
            now_s=now_s,
            running_classes=tuple(s.request.priority_class for s in batch.sequences),
            running_is_urgent=batch.is_urgent,
            running_is_prefill=batch.is_prefill,
            layer=batch.checkpoint.layer,
            expert=batch.checkpoint.expert,
            num_layers=self.executor.num_layers,
            run_s=batch.run_s,
            waiting=waiting,
            num_suspended=len(self.suspended),
        )

    def _suspend(self, batch: Batch) -> None:
        for sequence in batch.sequences:
            sequence.status = SequenceStatus.SUSPENDED
        self.recorder.preempted(batch.request_ids)
        batch.suspended_s = self.recorder.now()
        self.suspended.append(batch)
        self.running = None

    def _next_batch(self) -> Batch | None:
        decision = self.policy.schedule(self.suspended, self.recorder.now())
        self.recorder.preempted(s.request_id for s in decision.preempted)
        self.recorder.resumed(s.request_id for s in decision.readmitted)
        if decision.resume is not None:
            self.suspended.remove(decision.resume)
            decision.resume.is_resuming = True
            self.recorder.resumed(decision.resume.request_ids)
            return decision.resume
        if not decision.start:
            return None
        for sequence in decision.start:
            sequence.status = SequenceStatus.RUNNING
            self.recorder.scheduled(sequence.request_id)
        return Batch(
            decision.start,
            self.executor.forward(decision.start),
            is_prefill=decision.start[0].is_prefill,
            num_tokens=sum(s.num_new_tokens for s in decision.start),
        )

    def _run_quantum(self, batch: Batch) -> None:
        t_start_s = self.recorder.now()
        try:
            batch.checkpoint = next(batch.forward_pass)
            layer, expert, next_tokens = batch.checkpoint.layer, batch.checkpoint.expert, None
        except StopIteration as done:
            layer, expert, next_tokens = None, None, done.value
        t_end_s = self.recorder.now()
        batch.run_s += t_end_s - t_start_s
        self.recorder.quantum(
            Quantum(
                t_start_s=t_start_s,
                t_end_s=t_end_s,
                kind="prefill" if batch.is_prefill else "decode",
                request_ids=batch.request_ids,
                num_tokens=batch.num_tokens,
                layer=layer,
                expert=expert,
                is_resume=batch.is_resuming,
            )
        )
        batch.is_resuming = False
        if next_tokens is not None:
            self._finish_pass(batch, next_tokens)

    def _finish_pass(self, batch: Batch, next_tokens: list[int]) -> None:
        """Append each sequence's new token; finished sequences leave, the rest queue to decode."""
        self.running = None
        now_s = self.recorder.now()
        for sequence, token in zip(batch.sequences, next_tokens):
            sequence.output_ids.append(token)
        self.recorder.tokens({s.request_id: s.output_ids[-1] for s in batch.sequences})
        for sequence in batch.sequences:
            if sequence.is_finished:
                sequence.status = SequenceStatus.FINISHED
                sequence.kv.free()
                self.recorder.finished(sequence.request_id)
                self.policy.finished(sequence)
            else:
                sequence.status = SequenceStatus.WAITING
                sequence.ready_s = now_s
                self.policy.add(sequence)
