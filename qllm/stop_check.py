"""Whether a checkpoint decision could stop the running pass before new work arrives: what the
engine tells an executor each time a pass goes on (`Executor.forward(..., may_stop)`), so that a
simulated pass can run past checkpoints where nothing would happen.

A checkpoint policy preempts for queued work that outranks the running batch
(`CheckpointState.outranking`; a preemption without such work would be undone at once, the batch
resumed), so the answer is whether any queued sequence outranks it: never under `NeverPreempt`,
always while BE aging may promote queued work as time passes. Between two quanta of the same pass
the only sequences that can join the queues are those submitted meanwhile (nothing is released
mid-pass, so nothing that waited for memory is admitted), so after one walk over the queues each
later answer looks at the new arrivals only.
"""

from __future__ import annotations

from qllm.batch import Batch
from qllm.preemption import NeverPreempt
from qllm.scheduler import Scheduler
from qllm.sequence import Sequence, SequenceStatus


class StopCheck:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.checked: Batch | None = None  # the batch the last answer was for
        self.outranked = False  # the last answer
        self.arrived: list[Sequence] = []  # submitted since the last answer, not yet seen queued

    def submitted(self, sequence: Sequence) -> None:
        if self.checked is not None:  # only once an executor asks (the real one never does)
            self.arrived.append(sequence)

    def may_stop(self, batch: Batch) -> bool:
        scheduler, policy = self.scheduler, self.scheduler.policy
        if isinstance(scheduler.checkpoint_policy, NeverPreempt):
            return False
        if scheduler.be_aging_s is not None:
            return policy.has_queued()
        if batch is not self.checked or batch.is_resuming:  # a new pass, or one resumed after others ran
            self.checked, self.arrived = batch, []
            self.outranked = any(policy.outranks(s, batch) for s in policy.queued())
        elif not self.outranked:  # the queues have only grown, by sequences that arrived since
            queued = [s for s in self.arrived if s.status == SequenceStatus.QUEUED]
            self.arrived = [s for s in self.arrived if s.status == SequenceStatus.WAITING]
            self.outranked = any(policy.outranks(s, batch) for s in queued)
        return self.outranked
