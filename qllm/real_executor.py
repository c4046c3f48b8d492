"""The real executor: one forward pass of a batch, stage by stage, as a preemptible generator.

A pass runs the model's own modules (through its family adapter): embeddings, rotary
embedding, each decoder layer (attention through a `UnifiedDynamicCache`, then the MoE block),
final norm, LM head. Where it `yield`s a `Checkpoint` is the granularity:

- `iteration`: never; the pass is one quantum.
- `layer`: after every decoder layer, each called whole.
- `expert`: each layer runs in halves (`qllm.adapters.decoder.LayerParts`): a checkpoint after
  its attention half (`expert=ATTENTION`), then its MoE block runs expert by expert
  (`qllm.moe.ExpertByExpert`) with a checkpoint after every `experts_per_checkpoint` experts that
  received tokens (`expert` = the group's last expert; a shared expert is number `num_experts`).
  The layer's last checkpoint comes after its residual add. A dense layer's MLP runs whole
  (`expert=None`).

Preempting a batch is keeping its generator aside; resuming is calling `next()` on it again:
the generator's frame (hidden states, position embeddings, masks, cache, partial expert sums)
is the saved state, so nothing is copied and nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from qllm import rotary
from qllm.adapters import adapter_for
from qllm.adapters.decoder import LayerParts, check_cache_argument
from qllm.errors import ConfigurationError
from qllm.executor import ATTENTION, Checkpoint, check_granularity
from qllm.kv import KVPool, SequenceKV
from qllm.moe import ExpertByExpert, MoeParts
from qllm.sequence import Sequence
from qllm.unified_cache import UnifiedDynamicCache

MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take an explicit 4D padding mask
PAD_TOKEN_ID = 0  # fills padded query slots; any id in the vocabulary works, the mask hides them


@dataclass(frozen=True)
class BatchInputs:
    """What every layer of one pass reads, built once at the start of the pass."""

    hidden: torch.Tensor  # embeddings of the fed tokens: [batch, query, hidden]
    position_ids: torch.Tensor  # [batch, query]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [batch, query, head_dim]
    attention_masks: tuple[torch.Tensor, ...]  # per layer, [batch, 1, query, key]: bool for sdpa, additive for eager


class RealExecutor:
    """Runs a Hugging Face MoE model's own modules on torch (see the module docstring)."""

    def __init__(
        self, model: PreTrainedModel, granularity: str = "layer", experts_per_checkpoint: int = 1, kv_block_size: int = 16
    ) -> None:
        check_granularity(granularity, experts_per_checkpoint)
        attention = model.config._attn_implementation
        if attention not in MASKED_ATTENTION:
            raise ConfigurationError(
                f"attention implementation {attention!r} cannot take the executor's 4D padding mask; "
                f"load the model with attn_implementation='sdpa' (boolean mask) or 'eager' (additive mask)"
            )
        self.model = model
        self.config = model.config
        self.kv_pool = KVPool(model.config, model.dtype, model.device, kv_block_size)
        self.adapter = adapter_for(model)
        check_cache_argument(self.adapter.layers)
        self.granularity = granularity
        self.experts_per_checkpoint = experts_per_checkpoint  # experts run between two checkpoints (expert granularity)
        self.num_layers = len(self.adapter.layers)
        self.uses_additive_mask = attention == "eager"  # eager adds the mask to the attention scores

    def new_kv(self) -> SequenceKV:
        return SequenceKV(self.kv_pool)

    def forward(self, batch: list[Sequence], may_stop=None) -> Generator[Checkpoint, None, list[int]]:
        """One forward pass over `batch`; returns (StopIteration.value) each sequence's greedy next token.
        It yields at every checkpoint, whatever `may_stop` says (qllm.executor.Executor).

        Each sequence feeds its uncached tokens (whole prompt at prefill, last token at decode;
        mixed batches allowed), right-padded into one batch. Its new keys and values are committed
        when the pass completes; a pass closed before that leaves every cache as it was.
        Appending the tokens to `output_ids` is the engine's job.
        """
        cache = self._new_cache(batch)
        try:
            inputs = self._batch_inputs(batch, cache)
            hidden = inputs.hidden
            for index in range(self.num_layers):
                if self.granularity == "expert":
                    hidden = yield from self._run_layer_by_parts(index, hidden, inputs, cache)
                else:
                    hidden = self._run_layer(index, hidden, inputs, cache)
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
        windows = self.adapter.sliding_windows
        masks = {window: self._attention_mask(cache, window, hidden.dtype) for window in set(windows)}
        position_embeddings = rotary.position_embeddings(self.adapter.rotary_emb, hidden, position_ids)
        return BatchInputs(hidden, position_ids, position_embeddings, tuple(masks[w] for w in windows))

    def _attention_mask(self, cache: UnifiedDynamicCache, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        mask = cache.attention_mask(window, self.model.device)  # bool [batch, 1, query, key]
        if self.uses_additive_mask:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask

    @torch.no_grad()
    def _run_layer(
        self, index: int, hidden: torch.Tensor, inputs: BatchInputs, cache: UnifiedDynamicCache
    ) -> torch.Tensor:
        """Layer `index` called whole: [batch, query, hidden] -> [batch, query, hidden]."""
        return self.adapter.layers[index](
            hidden,
            position_embeddings=inputs.position_embeddings,
            attention_mask=inputs.attention_masks[index],
            position_ids=inputs.position_ids,
            cache=cache,
        )

    def _run_layer_by_parts(
        self, index: int, hidden: torch.Tensor, inputs: BatchInputs, cache: UnifiedDynamicCache
    ) -> Generator[Checkpoint, None, torch.Tensor]:
        """Layer `index` in halves, checkpointing inside it; returns its output [batch, query, hidden].

        Not wrapped in no_grad (a wrapped generator hides its frame from `gi_yieldfrom`, which
        qllm.memory walks to measure a suspended pass): every step it takes runs under no_grad itself.
        """
        parts: LayerParts = self.adapter.parts[index]
        mask = inputs.attention_masks[index]
        hidden = parts.attend(hidden, inputs.position_embeddings, mask, inputs.position_ids, cache)
        yield Checkpoint(layer=index, expert=ATTENTION)
        mlp_input = parts.mlp_input(hidden)  # [batch, query, hidden]
        if parts.moe is None:  # a dense layer: its MLP whole
            mlp_output, last_expert = parts.run_mlp(mlp_input), None
        else:
            mlp_output, last_expert = yield from self._run_experts(index, parts.moe, mlp_input)
        hidden = parts.add_residual(hidden, mlp_output)
        yield Checkpoint(layer=index, expert=last_expert)
        return hidden

    def _run_experts(
        self, index: int, moe_parts: MoeParts, mlp_input: torch.Tensor
    ) -> Generator[Checkpoint, None, tuple[torch.Tensor, int]]:
        """Layer `index`'s MoE block, a checkpoint after each expert group but the last (the layer's
        own checkpoint follows it); returns (the block's output [batch, query, hidden], the last expert)."""
        moe = ExpertByExpert(moe_parts, mlp_input.reshape(-1, mlp_input.shape[-1]))  # routes every token
        groups = moe.groups(self.experts_per_checkpoint)
        for number, group in enumerate(groups, start=1):
            for expert in group:
                moe.run(expert)
            if number < len(groups):
                yield Checkpoint(layer=index, expert=group[-1])
        return moe.output().view_as(mlp_input), groups[-1][-1]

    @torch.no_grad()
    def _greedy_next_tokens(self, hidden: torch.Tensor, cache: UnifiedDynamicCache) -> list[int]:
        rows = torch.arange(cache.batch_size, device=hidden.device)
        last_slots = torch.tensor(cache.num_new_tokens, device=hidden.device) - 1
        last_hidden = self.adapter.norm(hidden[rows, last_slots])  # [batch, hidden]
        logits = self.adapter.lm_head(last_hidden)  # [batch, vocab]
        return logits.argmax(dim=-1).tolist()
