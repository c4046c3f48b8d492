"""The real executor: one forward pass of a batch, stage by stage, as a preemptible generator.

A pass runs the model's own modules (through its family adapter): embeddings, rotary
embedding, each decoder layer (attention through a `UnifiedDynamicCache`, then the MoE block),
final norm, LM head. It `yield`s a `Checkpoint` after every decoder layer at layer
granularity. Preempting a batch is keeping its generator aside; resuming is calling `next()`
on it again: the generator's frame (hidden states, position embeddings, mask, cache) is the
saved state, so nothing is copied and nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from qllm.adapters import adapter_for
from qllm.kv import SequenceKV
from qllm.sequence import Sequence
from qllm.unified_cache import UnifiedDynamicCache

GRANULARITIES = ("iteration", "layer")  # "expert" arrives with expert-level preemption
MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take an explicit 4D padding mask
PAD_TOKEN_ID = 0  # fills padded query slots; any id in the vocabulary works, the mask hides them


@dataclass(frozen=True)
class Checkpoint:
    """Where a preemptible pass stopped."""

    layer: int  # the decoder layer just completed (0-based)
    expert: int | None = None  # reserved for expert granularity (a later issue)


@dataclass(frozen=True)
class BatchInputs:
    """What every layer of one pass reads, built once at the start of the pass."""

    hidden: torch.Tensor  # embeddings of the fed tokens: [batch, query, hidden]
    position_ids: torch.Tensor  # [batch, query]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [batch, query, head_dim]
    attention_mask: torch.Tensor  # [batch, 1, query, key]: bool for sdpa, additive float for eager


class Executor:
    def __init__(self, model: PreTrainedModel, granularity: str = "layer") -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity {granularity!r}: expected one of {GRANULARITIES}")
        attention = model.config._attn_implementation
        if attention not in MASKED_ATTENTION:
            raise ValueError(
                f"attention implementation {attention!r} cannot take the executor's 4D padding mask; "
                f"load the model with attn_implementation='sdpa' (boolean mask) or 'eager' (additive mask)"
            )
        self.model = model
        self.adapter = adapter_for(model)
        self.granularity = granularity
        self.num_layers = len(self.adapter.layers)
        self.uses_additive_mask = attention == "eager"  # eager adds the mask to the attention scores

    def new_kv(self) -> SequenceKV:
        return SequenceKV()

    def forward(self, batch: list[Sequence]) -> Generator[Checkpoint, None, list[int]]:
        """One forward pass over `batch`; returns (StopIteration.value) each sequence's greedy next token.

        Each sequence feeds its uncached tokens (whole prompt at prefill, last token at decode;
        mixed batches allowed), right-padded into one batch. Its new keys and values are committed
        when the pass completes; a pass closed before that leaves every cache as it was.
        Appending the tokens to `output_ids` is the engine's job.
        """
        cache = self._new_cache(batch)
        try:
            inputs = self._batch_inputs(batch, cache)
            hidden = inputs.hidden
            for index, layer in enumerate(self.adapter.layers):
                hidden = self._run_layer(layer, hidden, inputs, cache)
                if self.granularity == "layer":
                    yield Checkpoint(layer=index)
            next_token_ids = self._greedy_next_tokens(hidden, cache)
            cache.commit()
            return next_token_ids
        finally:
            cache.release()

    def _new_cache(self, batch: list[Sequence]) -> UnifiedDynamicCache:
        try:
            kvs, num_new_tokens = [seq.kv for seq in batch], [seq.num_new_tokens for seq in batch]
            return UnifiedDynamicCache(kvs, num_new_tokens, self.num_layers)
        except ValueError as error:
            raise ValueError(f"batch {[seq.request_id for seq in batch]}: {error}") from error

    @torch.no_grad()
    def _batch_inputs(self, batch: list[Sequence], cache: UnifiedDynamicCache) -> BatchInputs:
        device = self.model.device
        fed = [seq.new_token_ids for seq in batch]
        padded = [ids + [PAD_TOKEN_ID] * (cache.query_length - len(ids)) for ids in fed]
        input_ids = torch.tensor(padded, device=device)  # [batch, query]
        hidden = self.adapter.embed_tokens(input_ids)  # [batch, query, hidden]
        position_ids = cache.position_ids(device)
        mask = cache.attention_mask(self.adapter.sliding_window, device)  # bool [batch, 1, query, key]
        if self.uses_additive_mask:
            blocked = torch.finfo(hidden.dtype).min
            mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=device).masked_fill(~mask, blocked)
        position_embeddings = self.adapter.rotary_emb(hidden, position_ids=position_ids)
        return BatchInputs(hidden, position_ids, position_embeddings, mask)

    @torch.no_grad()
    def _run_layer(
        self, layer: torch.nn.Module, hidden: torch.Tensor, inputs: BatchInputs, cache: UnifiedDynamicCache
    ) -> torch.Tensor:
        return layer(
            hidden,  # [batch, query, hidden]
            position_embeddings=inputs.position_embeddings,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            cache=cache,
        )

    @torch.no_grad()
    def _greedy_next_tokens(self, hidden: torch.Tensor, cache: UnifiedDynamicCache) -> list[int]:
        rows = torch.arange(cache.batch_size, device=hidden.device)
        last_slots = torch.tensor(cache.num_new_tokens, device=hidden.device) - 1
        last_hidden = self.adapter.norm(hidden[rows, last_slots])  # [batch, hidden]
        logits = self.adapter.lm_head(last_hidden)  # [batch, vocab]
        return logits.argmax(dim=-1).tolist()


def run_to_completion(forward_pass: Generator[Checkpoint, None, list[int]]) -> list[int]:
    """Drive a (possibly resumed) forward pass through its remaining checkpoints; return its tokens."""
    while True:
        try:
            next(forward_pass)
        except StopIteration as stop:
            return stop.value
