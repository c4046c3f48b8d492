"""`QLLMEngine`: continuous batching on the real executor; a policy picks batches and preemptions.

One `step()` runs one quantum: up to the next checkpoint of the running batch's forward pass
(a decoder layer with `layer` granularity, an attention half or an expert group with `expert`,
the whole pass with `iteration`). At each checkpoint
the checkpoint policy may set the running batch aside; its generator keeps the pass's state, so
resuming recomputes nothing.
"""

from __future__ import annotations

from harness.recorder import Quantum, Recorder
from harness.request import Request
from qllm.batch import Batch
from qllm.executor import Executor
from qllm.memory import MemoryBudget, allocated_kv_bytes, kv_bytes_per_token, suspended_bytes
from qllm.policies.protocol import SchedulingPolicy
from qllm.preemption import CheckpointPolicy, CheckpointState, NeverPreempt
from qllm.prompts import prompt_token_ids, rejection_reason
from qllm.sequence import Sequence, SequenceStatus


class QLLMEngine:
    def __init__(
        self,
        model,
        recorder: Recorder,
        policy: SchedulingPolicy,
        checkpoint_policy: CheckpointPolicy | None = None,
        granularity: str = "layer",
        memory_budget_mb: float | None = None,
        name: str = "qllm",
        experts_per_checkpoint: int = 1,  # expert granularity: experts run between two checkpoints
    ):
        self.executor = Executor(model, granularity=granularity, experts_per_checkpoint=experts_per_checkpoint)
        self.recorder = recorder
        self.policy = policy
        self.checkpoint_policy = checkpoint_policy or NeverPreempt()
        self.name = name
        self.config = model.config
        budget_bytes = None if memory_budget_mb is None else int(memory_budget_mb * 2**20)
        self.memory = MemoryBudget(budget_bytes, kv_bytes_per_token(model.config, model.dtype))
        self.running: Batch | None = None
        self.suspended: list[Batch] = []  # preempted batches, oldest first

    def submit(self, request: Request) -> None:
        reason = rejection_reason(request, self.config) or self.memory.rejection_reason(request)
        if reason is not None:
            self.recorder.rejected(request.request_id, reason)
            return
        prompt = prompt_token_ids(request, self.config.vocab_size)
        kv = self.executor.new_kv()
        self.memory.wait(Sequence(request=request, prompt_ids=prompt, kv=kv, ready_s=request.arrival_s))

    def idle(self) -> bool:
        return (
            self.running is None and not self.suspended and not self.policy.has_waiting() and not self.memory.pending
        )

    def step(self) -> None:
        if self.memory.pending:
            for sequence in self.memory.admit(self._suspended_bytes()):
                self.policy.add(sequence)
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
        return CheckpointState(
            now_s=now_s,
            running_classes=tuple(s.request.priority_class for s in batch.sequences),
            running_is_urgent=batch.is_urgent,
            running_is_prefill=batch.is_prefill,
            layer=batch.checkpoint.layer,
            expert=batch.checkpoint.expert,
            num_layers=self.executor.num_layers,
            run_s=batch.run_s,
            num_suspended=len(self.suspended),
            queued=tuple(self.policy.waiting(now_s)),
        )

    def _suspended_bytes(self) -> int:
        return sum(batch.suspended_bytes for batch in self.suspended)

    def _suspend(self, batch: Batch) -> None:
        for sequence in batch.sequences:
            sequence.status = SequenceStatus.SUSPENDED
        self.recorder.preempted(batch.request_ids)
        batch.suspended_s = self.recorder.now()
        batch.suspended_bytes = suspended_bytes(batch)  # the frame is frozen until it resumes
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
                **(self._state_gauges() if next_tokens is not None else {}),
            )
        )
        batch.is_resuming = False
        if next_tokens is not None:
            self._finish_pass(batch, next_tokens)

    def _state_gauges(self) -> dict:
        """Queues and memory as a pass ends, for the timeline (not after every quantum: it costs
        a walk over every queued sequence)."""
        queued = list(self.policy.waiting(self.recorder.now()))
        in_suspended = [s for batch in self.suspended for s in batch.sequences]
        in_running = self.running.sequences if self.running is not None else []
        return {
            "num_queued": len(queued) + len(self.memory.pending),
            "num_suspended": len(in_suspended),
            "kv_reserved_bytes": self.memory.reserved_bytes,
            "kv_allocated_bytes": allocated_kv_bytes([*queued, *in_suspended, *in_running]),
            "suspended_bytes": self._suspended_bytes(),
        }

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
                self.memory.release(sequence)
                self.recorder.finished(sequence.request_id)
                self.policy.finished(sequence)
            else:
                sequence.status = SequenceStatus.WAITING
                sequence.ready_s = now_s
                self.policy.add(sequence)
