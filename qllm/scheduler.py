"""The scheduler: owns every unfinished sequence, from submission to its last token.

A sequence is waiting for memory, queued (in the scheduling policy's order), running (in the
batch being executed) or suspended (in a batch set aside mid-pass); `Sequence.status` says which.
The scheduler admits what memory allows, asks the checkpoint policy whether to set the running
batch aside, and, when nothing runs, resumes a suspended batch or starts the policy's next one.

Catch-up merge (`catch_up_merge`): an LS prompt batch started while a decode batch is suspended
after (or inside) layer L runs layers 0..L only, as a catch-up pass, then joins that batch
(`merge`), whose pass runs the rest of the model once for both; until then the decode batch waits
for it and is not resumed alone.
"""

from __future__ import annotations

from qllm.batch import Batch
from qllm.events import EngineStats, EventSink
from qllm.memory import MemoryBudget
from qllm.policies.base import SchedulerView
from qllm.policies.protocol import SchedulingPolicy, is_outranked
from qllm.preemption import NOTHING, OUTRANKING_WORK, CheckpointPolicy, CheckpointState, preempts_for
from qllm.queues import PriorityQueue
from qllm.request import PRIORITY_CLASSES
from qllm.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(
        self,
        policy: SchedulingPolicy,
        checkpoint_policy: CheckpointPolicy,
        memory: MemoryBudget,
        events: EventSink,
        num_layers: int,
        be_aging_s: float | None = None,
        catch_up_merge: bool = False,
    ) -> None:
        self.policy = policy
        self.checkpoint_policy = checkpoint_policy
        self.memory = memory
        self.events = events
        self.num_layers = num_layers
        self.be_aging_s = be_aging_s  # a BE sequence waiting longer is served as LS (None: never)
        self.catch_up_merge = catch_up_merge  # LS prompts catch up with the suspended decode batch and join it
        self.waiting = PriorityQueue()  # submitted, not admitted yet: most urgent admitted first
        self.running: Batch | None = None
        self.suspended: list[Batch] = []  # preempted batches, oldest first
        self.unfinished: dict[str, Sequence] = {}  # by request id; each sequence's status says where it is
        policy.bind(SchedulerView(self.unfinished, self.waiting))  # what the policy reads of this scheduler, read-only

    @property
    def is_idle(self) -> bool:
        return not self.unfinished

    def add(self, sequence: Sequence) -> None:
        sequence.status = SequenceStatus.WAITING
        self.waiting.add(sequence)
        self.unfinished[sequence.request_id] = sequence

    def admit(self) -> None:
        """Queue waiting sequences, most urgent first, while memory allows; the head blocks those behind it."""
        held = self.suspended_bytes
        while len(self.waiting) and self.memory.fits(self.memory.reservation(self.waiting.peek().request), held):
            sequence = self.waiting.pop()
            self.memory.reserve(sequence)
            self._queue(sequence)

    def checkpoint(self, now_s: float) -> None:
        """At the running pass's checkpoint, set the batch aside if the checkpoint policy says so and
        the state its pass holds fits the memory budget beside everything else."""
        batch = self.running
        if batch is None or batch.checkpoint is None or not self.may_stop(batch):
            return
        self._promote_aged(now_s)
        if self.checkpoint_policy.should_preempt(self._checkpoint_state(batch, now_s)):
            held = batch.forward_pass.held_bytes()  # what the executor reports the pass holds here, until it resumes
            if self.memory.fits(held, self.suspended_bytes):
                self._suspend(batch, held, now_s)

    def may_stop(self, batch: Batch) -> bool:
        """Could a checkpoint decision stop `batch`'s pass now? The one answer both the scheduler and
        the executors use (`Executor.forward(..., may_stop)`): never for a policy that preempts for
        nothing; for one that preempts for outranking work, when the scheduling policy ranks queued work
        above the batch (any queued work while BE aging may promote it as time passes); otherwise
        whenever work is queued."""
        reason = preempts_for(self.checkpoint_policy)
        if reason == NOTHING or not self.policy.has_queued():
            return False
        if reason == OUTRANKING_WORK and self.be_aging_s is None:
            return is_outranked(self.policy, batch)
        return True

    def next_batch(self, now_s: float) -> Batch | None:
        """The running batch; when none runs, a suspended batch that nothing queued outranks, else
        the policy's next batch, else (the policy has nothing to start) the oldest suspended one."""
        if self.running is None:
            self._promote_aged(now_s)
            awaited = {id(batch.joins) for batch in self.suspended if batch.joins is not None}
            resumable = next((batch for batch in self.suspended if id(batch) not in awaited), None)
            if resumable is not None and not is_outranked(self.policy, resumable):
                self._resume(resumable)
            else:
                decision = self.policy.schedule()
                self.events.preempted(s.request_id for s in decision.preempted)
                self.events.resumed(s.request_id for s in decision.readmitted)
                if decision.start:
                    self._start(decision.start)
                elif resumable is not None:
                    self._resume(resumable)
        return self.running

    def merge(self, catch_up: Batch, rows) -> None:
        """`catch_up`'s pass has run its prompts up to its target's layer (`rows`, qllm.executor.CaughtUp):
        the target runs again with them, and its pass goes on as one for both."""
        target = catch_up.joins
        self._resume(target)
        target.take_in(catch_up, rows)

    def finish_pass(self, batch: Batch, now_s: float) -> None:
        """The running pass is done and each sequence holds its new token: finished sequences leave,
        the rest queue for their next one."""
        self.running = None
        for sequence in batch.sequences:
            if sequence.has_all_tokens:
                sequence.status = SequenceStatus.FINISHED
                sequence.kv.free()
                self.memory.release(sequence)
                self.policy.finished(sequence)
                del self.unfinished[sequence.request_id]
                self.events.finished(sequence.request_id)
            else:
                sequence.ready_s = now_s
                self._queue(sequence)

    def abort(self, request_id: str) -> bool:
        """Drop an unfinished request wherever it is (its client went away): it leaves every queue,
        and its KV and memory reservation are freed. A batch in flight that holds it (running, at a
        checkpoint, or suspended) is dissolved: its pass is closed, which commits nothing, and its
        other sequences queue again to redo that pass. False when no unfinished request has that id."""
        sequence = self.unfinished.get(request_id)
        if sequence is None:
            return False
        if sequence.status == SequenceStatus.WAITING:  # not admitted: nothing reserved or allocated yet
            self.waiting.remove(sequence)
            self._drop(sequence, is_admitted=False)
            return True
        if sequence.status in (SequenceStatus.RUNNING, SequenceStatus.SUSPENDED):
            in_flight = [self.running] if sequence.status == SequenceStatus.RUNNING else self.suspended
            self._dissolve(next(batch for batch in in_flight if sequence in batch.sequences))
        self._drop(sequence)
        return True

    @property
    def suspended_bytes(self) -> int:
        return sum(batch.suspended_bytes for batch in self.suspended)

    def stats(self) -> EngineStats:
        """Queues and memory now."""
        waiting = {priority_class: 0 for priority_class in PRIORITY_CLASSES}
        for sequence in (*self.waiting, *self.policy.queued()):  # walks the queues: a server's, not every quantum's
            waiting[sequence.request.priority_class] += 1
        return EngineStats(
            **self.timeline_gauges(),
            num_waiting_by_class=waiting,
            num_running_batches=0 if self.running is None else 1,
            num_suspended_batches=len(self.suspended),
        )

    def timeline_gauges(self) -> dict[str, int]:
        """EngineStats' fields that every quantum records (TIMELINE_GAUGES), each O(1) to read."""
        num_suspended = sum(len(batch.sequences) for batch in self.suspended)
        num_running = len(self.running.sequences) if self.running is not None else 0
        return {
            "num_queued": len(self.unfinished) - num_suspended - num_running,  # waiting for memory or a batch
            "num_suspended": num_suspended,
            "kv_reserved_bytes": self.memory.reserved_bytes,
            "kv_allocated_bytes": self.memory.pool.used_bytes,
            "kv_needed_bytes": self.memory.pool.needed_bytes,
            "suspended_bytes": self.suspended_bytes,
        }

    def _queue(self, sequence: Sequence) -> None:
        sequence.status = SequenceStatus.QUEUED
        self.policy.add(sequence)

    def _checkpoint_state(self, batch: Batch, now_s: float) -> CheckpointState:
        return CheckpointState(
            now_s=now_s,
            running_classes=tuple(s.request.priority_class for s in batch.sequences),
            running_is_urgent=batch.is_urgent,
            running_is_prefill=batch.is_prefill,
            layer=batch.checkpoint.layer,
            expert=batch.checkpoint.expert,
            num_layers=self.num_layers,
            run_s=batch.run_s,
            num_suspended=len(self.suspended),
            queued=self.policy.queued,
            outranking_queued=lambda: self.policy.outranking(batch),
        )

    def _start(self, sequences: list[Sequence]) -> None:
        for sequence in sequences:
            sequence.status = SequenceStatus.RUNNING
            self.events.scheduled(sequence.request_id)
        self.running = Batch.of(sequences)
        self.running.joins = self._catch_up_target(self.running)

    def _catch_up_target(self, batch: Batch) -> Batch | None:
        """The suspended batch `batch` catches up with, when merging is on: an urgent prompt batch joins
        the batch set aside last if it is a decode batch that no other catch-up awaits, and has layers left
        after the one it stopped in (its last layer's end leaves only the LM head to share)."""
        if not (self.catch_up_merge and batch.is_prefill and batch.is_urgent and self.suspended):
            return None
        target = self.suspended[-1]
        if target.kind != "decode" or target.checkpoint.layer + 1 >= self.num_layers:
            return None
        return None if any(other.joins is target for other in self.suspended) else target

    def _suspend(self, batch: Batch, held_bytes: int, now_s: float) -> None:
        for sequence in batch.sequences:
            sequence.status = SequenceStatus.SUSPENDED
            sequence.ready_s = now_s
        self.events.preempted(batch.request_ids)
        batch.suspended_bytes = held_bytes
        self.suspended.append(batch)
        self.running = None

    def _resume(self, batch: Batch) -> None:
        self.suspended.remove(batch)
        for sequence in batch.sequences:
            sequence.status = SequenceStatus.RUNNING
        batch.is_resuming = True
        batch.suspended_bytes = 0
        self.events.resumed(batch.request_ids)
        self.running = batch

    def _dissolve(self, batch: Batch) -> None:
        """Close `batch`'s pass (an unfinished pass commits nothing) and queue its sequences again,
        each as it was before the pass; a catch-up batch heading for it is dissolved too."""
        for catch_up in [b for b in (self.running, *self.suspended) if b is not None and b.joins is batch]:
            self._dissolve(catch_up)
        if batch.forward_pass is not None:
            batch.forward_pass.close()
        if batch.joining is not None:  # rows sent to it, not taken in yet
            batch.joining.release()
        if batch is self.running:
            self.running = None
        else:
            self.suspended.remove(batch)
            self.events.resumed(batch.request_ids)  # their suspension ends: they queue again
        for sequence in batch.sequences:
            self.policy.remove(sequence)
            self._queue(sequence)

    def _drop(self, sequence: Sequence, is_admitted: bool = True) -> None:
        """`sequence` leaves the engine unfinished: its queue entry, KV and reservation go."""
        if is_admitted:
            self.policy.remove(sequence)
            sequence.kv.free()
            self.memory.release(sequence)
        sequence.status = SequenceStatus.ABORTED
        del self.unfinished[sequence.request_id]

    def _promote_aged(self, now_s: float) -> None:
        """BE aging: a BE sequence queued or suspended for longer than the bound is served as LS from now on."""
        if self.be_aging_s is None:
            return
        def aged(sequences):
            return [s for s in sequences if not s.is_urgent and now_s - s.ready_s > self.be_aging_s]

        for sequence in aged(s for batch in self.suspended for s in batch.sequences):
            sequence.is_promoted = True
        queued = sorted(aged(self.policy.queued()), key=lambda s: s.ready_s)
        for sequence in queued:
            sequence.is_promoted = True
        if queued:
            self.policy.promote(queued)
