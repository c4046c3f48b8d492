"""The orders queued sequences are served in, behind one small interface (as vLLM v1's
`FCFSRequestQueue` and `PriorityRequestQueue`): first come first served, or by priority."""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator

from qllm.sequence import Sequence


class FCFSQueue:
    """Sequences in the order they were added."""

    def __init__(self) -> None:
        self._items: deque[Sequence] = deque()

    def add(self, sequence: Sequence) -> None:
        self._items.append(sequence)

    def add_first(self, sequence: Sequence) -> None:
        """Ahead of every sequence queued."""
        self._items.appendleft(sequence)

    def peek(self) -> Sequence:
        return self._items[0]

    def pop(self) -> Sequence:
        return self._items.popleft()

    def remove(self, sequence: Sequence) -> None:
        self._items.remove(sequence)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class PriorityQueue:
    """Sequences by `Sequence.order`: priority, then arrival, then id."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple, Sequence]] = []

    def add(self, sequence: Sequence) -> None:
        heapq.heappush(self._heap, (sequence.order, sequence))

    def peek(self) -> Sequence:
        return self._heap[0][1]

    def pop(self) -> Sequence:
        return heapq.heappop(self._heap)[1]

    def remove(self, sequence: Sequence) -> None:
        self._heap = [item for item in self._heap if item[1] is not sequence]
        heapq.heapify(self._heap)

    def __iter__(self) -> Iterator[Sequence]:
        """In priority order."""
        return (sequence for _, sequence in sorted(self._heap, key=lambda item: item[0]))

    def __len__(self) -> int:
        return len(self._heap)


def take_batch(queue: FCFSQueue | PriorityQueue, max_sequences: int, max_tokens: float = math.inf,
               oversized_head: bool = True) -> list[Sequence]:
    """Remove and return sequences from the head of the queue, in its order, while the batch stays
    within both limits (`max_tokens` counts the tokens each feeds).

    With `oversized_head` the first sequence is taken even alone over `max_tokens`, so that a long
    prompt cannot block its queue forever.
    """
    batch: list[Sequence] = []
    num_tokens = 0
    while len(queue) and len(batch) < max_sequences:
        tokens = queue.peek().num_new_tokens
        if num_tokens + tokens > max_tokens and (batch or not oversized_head):
            break
        batch.append(queue.pop())
        num_tokens += tokens
    return batch
