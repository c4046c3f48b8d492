"""`QLLMEngine`: one scheduler plus one executor, stepped one quantum at a time.

One `step()` reads top to bottom: admit what memory allows, ask the checkpoint policy whether to
set the running batch aside, pick the next batch (the running one, a resumed one or a new one),
run one quantum of it, and post-process a pass that ended. A quantum runs up to the next
checkpoint of the batch's forward pass (a decoder layer with `layer` granularity, an attention
half or an expert group with `expert`, the whole pass with `iteration`); a suspended pass's
generator keeps its state, so resuming recomputes nothing.

With `catch_up_merge`, an LS prompt batch that preempted a decode batch inside layer L runs as a
catch-up pass (layers 0..L, qllm.executor.Executor.catch_up), preemptible like any pass; when it
ends, its sequences join the suspended batch, whose next quantum takes their rows (`send`), and the
rest of that pass runs once for all: one quantum's record lists every sequence of the merged batch,
of kind "mixed", and they all get their tokens when it ends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from qllm.batch import Batch
from qllm.errors import ConfigurationError
from qllm.events import Clock, EngineStats, EventSink, Quantum
from qllm.executor import Executor
from qllm.memory import MemoryBudget
from qllm.policies.protocol import SchedulingPolicy, check_policy
from qllm.preemption import NOTHING, CheckpointPolicy, preempts_for
from qllm.prompts import prompt_token_ids, rejection_reason
from qllm.request import Request
from qllm.scheduler import Scheduler
from qllm.sequence import Sequence


class QLLMEngine:
    def __init__(
        self,
        executor: Callable[..., Executor],
        clock: Clock,
        events: EventSink,
        policy: SchedulingPolicy,
        checkpoint_policy: CheckpointPolicy,
        granularity: str = "layer",
        experts_per_checkpoint: int = 1,
        memory_budget_mb: float | None = None,
        be_aging_s: float | None = None,
        catch_up_merge: bool = False,
        name: str = "qllm",
    ):
        """`executor` builds the executor (`qllm.real.executor.RealExecutor` with its model bound, say)
        from `granularity` and `experts_per_checkpoint`."""
        check_policy(name, policy)
        check_combination(name, policy, checkpoint_policy)
        self.executor = executor(granularity=granularity, experts_per_checkpoint=experts_per_checkpoint)
        self.clock = clock
        self.events = events
        self.name = name
        budget_bytes = None if memory_budget_mb is None else int(memory_budget_mb * 2**20)
        if budget_bytes is not None and budget_bytes < self.executor.kv_pool.block_bytes:
            raise ConfigurationError(
                f"engine {name}: memory_budget_mb={memory_budget_mb} cannot hold one KV block "
                f"({self.executor.kv_pool.block_bytes} B): set it higher, or null for no limit"
            )
        memory = MemoryBudget(budget_bytes, self.executor.kv_pool)
        self.scheduler = Scheduler(policy, checkpoint_policy, memory, events, self.executor.num_layers, be_aging_s,
                                   catch_up_merge)  # fmt: skip

    @property
    def model_config(self):
        """The served model's Hugging Face config: its context length, vocabulary and EOS token."""
        return self.executor.config

    def rejection_reason(self, request: Request) -> str | None:
        """Why `request` can never be served (context, vocabulary, memory budget); None when it can."""
        return rejection_reason(request, self.model_config) or self.scheduler.memory.rejection_reason(request)

    def stats(self) -> EngineStats:
        """Queues and memory now (call between steps)."""
        return self.scheduler.stats()

    def submit(self, request: Request) -> None:
        reason = self.rejection_reason(request)
        if reason is not None:
            self.events.rejected(request.request_id, reason)
            return
        prompt = prompt_token_ids(request, self.model_config.vocab_size)
        self.scheduler.add(Sequence(request, prompt, self.executor.new_kv(), ready_s=request.arrival_s))

    def abort(self, request_id: str) -> bool:
        """Drop an unfinished request (its client went away) and free its KV; call between steps.
        Other sequences of a batch in flight with it redo that batch's pass; nothing else changes.
        False when no unfinished request has that id (finished, rejected or unknown)."""
        return self.scheduler.abort(request_id)

    def idle(self) -> bool:
        return self.scheduler.is_idle

    def step(self) -> None:
        now_s = self.clock.now()
        self.scheduler.admit()
        self.scheduler.checkpoint(now_s)
        batch = self.scheduler.next_batch(now_s)
        if batch is None:
            return
        result = self._run_quantum(batch)
        if result is None:
            return
        if batch.joins is not None:  # a catch-up pass: its rows join the batch it caught up with
            self.scheduler.merge(batch, result)
        else:
            self._finish_pass(batch, result)

    def _run_quantum(self, batch: Batch):
        """One quantum of `batch`'s pass; returns each sequence's next token when the pass ended (a
        catch-up pass: its rows, qllm.executor.CaughtUp)."""
        if batch.forward_pass is None:
            may_stop = functools.partial(self.scheduler.may_stop, batch)  # asked each time the pass goes on
            if batch.joins is None:
                batch.forward_pass = self.executor.forward(batch.sequences, may_stop=may_stop)
            else:  # up to the layer its target stopped in, that layer included
                batch.forward_pass = self.executor.catch_up(batch.sequences, batch.joins.checkpoint.layer + 1, may_stop)
        rows, batch.joining = batch.joining, None
        t_start_s = self.clock.now()
        try:
            batch.checkpoint = batch.forward_pass.send(rows)  # next(), unless caught-up rows join the pass here
            layer, expert, result = batch.checkpoint.layer, batch.checkpoint.expert, None
        except StopIteration as done:
            # A catch-up pass ends after its target's layer; any other pass after the LM head.
            layer, expert, result = (None if batch.joins is None else batch.joins.checkpoint.layer), None, done.value
        del rows
        t_end_s = self.clock.now()
        batch.run_s += t_end_s - t_start_s
        self.events.quantum(
            Quantum(
                t_start_s=t_start_s,
                t_end_s=t_end_s,
                kind=batch.kind,
                request_ids=batch.request_ids,
                num_tokens=batch.num_tokens,
                layer=layer,
                expert=expert,
                is_resume=batch.is_resuming,
                **self.scheduler.timeline_gauges(),  # after every admit and suspend, and every allocation
            )
        )
        batch.is_resuming = False
        return result

    def _finish_pass(self, batch: Batch, next_tokens: list[int]) -> None:
        for sequence, token in zip(batch.sequences, next_tokens):
            sequence.output_ids.append(token)
        self.events.tokens({s.request_id: s.output_ids[-1] for s in batch.sequences})
        self.scheduler.finish_pass(batch, self.clock.now())


def check_combination(name: str, policy: SchedulingPolicy, checkpoint_policy: CheckpointPolicy) -> None:
    """A checkpoint policy that may preempt needs a scheduling policy that ranks work above running
    work: otherwise it would never preempt (or preempt for work that is not served next)."""
    if not policy.serves_preemption and preempts_for(checkpoint_policy) != NOTHING:
        raise ConfigurationError(
            f"engine {name}: scheduling policy {type(policy).__name__} ranks no queued work above a running "
            f"batch, so checkpoint policy {type(checkpoint_policy).__name__} has nothing to preempt for; "
            f"pair it with checkpoint=never, or choose a preempting policy (qllm, qllm_prototype)"
        )
