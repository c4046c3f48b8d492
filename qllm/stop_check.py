"""Whether a checkpoint decision could stop the running pass before new work arrives: what the
engine tells an executor each time a pass goes on (`Executor.forward(..., may_stop)`), so that a
simulated pass can run past checkpoints where nothing would happen.

A checkpoint policy preempts for queued work that outranks the running batch
(`CheckpointState.outranking`; a preemption without such work would be undone at once, the batch
resumed), so the answer is whether the scheduling policy ranks any queued sequence above it
(`outranking`, which reads one of its own queues): never under `NeverPreempt`, and always while BE
aging may promote queued work as time passes.
"""

from __future__ import annotations

from qllm.batch import Batch
from qllm.policies.protocol import is_outranked
from qllm.preemption import NeverPreempt
from qllm.scheduler import Scheduler


def may_stop(scheduler: Scheduler, batch: Batch) -> bool:
    if isinstance(scheduler.checkpoint_policy, NeverPreempt):
        return False
    if scheduler.be_aging_s is not None:
        return scheduler.policy.has_queued()
    return is_outranked(scheduler.policy, batch)
