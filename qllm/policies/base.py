"""What every scheduling policy shares, derived from the queues it declares, and the read-only view
of the scheduler it reads.

A policy keeps queued sequences in queues of its own (`queues()`); from them the base class answers
`queued`, `has_queued` and `remove`, so no policy keeps shadow sets in step with the scheduler's
state: what has started and not finished is read from the scheduler (`SchedulerView`), which owns
every sequence. A policy of one class subclasses `QueuePolicy` and writes `add`, `queues` and
`schedule` (and `outranking`, `promote` where it ranks or reorders by class).
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from itertools import chain

from qllm.batch import Batch
from qllm.sequence import Sequence


class SchedulerView:
    """What a policy may read of the scheduler; it changes nothing."""

    def __init__(self, unfinished: dict[str, Sequence], waiting: Sized) -> None:
        self._unfinished = unfinished  # the scheduler's own, by request id
        self._waiting = waiting  # submitted, not admitted yet (waiting for memory)

    def num_admitted(self) -> int:
        """Unfinished sequences past admission: in the policy's queues, running or suspended. A policy
        counts those it has started by taking away the prompts its own queues hold: both are O(1),
        and a step must not walk the queues, which past capacity hold thousands."""
        return len(self._unfinished) - len(self._waiting)


class QueuePolicy:
    """The bookkeeping of a policy, derived from the queues it declares."""

    serves_preemption = False  # ranks no queued work above running work (override with `outranking`)
    scheduler: SchedulerView | None = None  # bound by the scheduler that runs the policy

    def bind(self, scheduler: SchedulerView) -> None:
        self.scheduler = scheduler

    def queues(self) -> Iterable[Sized]:
        """Every queue that holds queued sequences (FCFSQueue, PriorityQueue or list)."""
        raise NotImplementedError

    def queued(self) -> Iterable[Sequence]:
        return chain(*self.queues())

    def has_queued(self) -> bool:
        return any(len(queue) for queue in self.queues())

    def remove(self, sequence: Sequence) -> None:
        for queue in self.queues():
            if sequence in queue:
                queue.remove(sequence)

    def finished(self, sequence: Sequence) -> None:
        """Nothing to forget: the queues no longer hold it, and the scheduler owns the rest."""

    def outranking(self, batch: Batch) -> Iterable[Sequence]:
        return ()

    def promote(self, sequences: list[Sequence]) -> None:
        """The order here does not depend on the class."""
