"""The real executor: one forward pass of a batch, stage by stage, as a preemptible generator.

A pass runs the model's own modules (through its family adapter): embeddings, rotary
embedding, each decoder layer (attention through a `UnifiedDynamicCache`, then the MoE block),
final norm, LM head. Where it `yield`s a `Checkpoint` is the granularity:

- `iteration`: never; the pass is one quantum.
- `layer`: after every decoder layer.
- `expert`: each layer runs in halves (`qllm.modeling.adapters.decoder.LayerParts`): a checkpoint after
  its attention half (`expert=ATTENTION`), then its MoE block runs expert by expert
  (`qllm.modeling.moe.ExpertByExpert`) with a checkpoint after every `experts_per_checkpoint` experts that
  received tokens (`expert` = the group's last expert; a shared expert is number `num_experts`).
  The layer's last checkpoint comes after its residual add. A dense layer's MLP runs whole
  (`expert=None`).

A batch of decode rows alone, or of prompts of one length, calls each layer whole (at layer and
iteration granularity). Otherwise the layer runs in halves there too: attention per row group
(decode rows, prompt rows), then the MLP half once on the real tokens of both, packed
(`qllm.real.row_groups`), so padding and mixed batches cost the experts nothing extra.

Preempting a batch is keeping its generator aside; resuming is calling `next()` on it again:
the generator's frame (hidden states, position embeddings, masks, cache, partial expert sums)
is the saved state, so nothing is copied and nothing is recomputed. The pass records which of
those tensors it keeps at each checkpoint, and the routing of the MoE block it is in
(`qllm.memory.HeldTensors`): what the engine accounts for a suspended pass, and the profiler reads.

Catch-up merge: `catch_up(batch, L)` runs a batch (an LS prompt) through layers 0..L-1 with the
usual checkpoints but none at its end, and returns its rows (`CaughtUpRows`: row groups, caches in
flight, hidden states) instead of tokens. Sent to a suspended pass at a checkpoint of layer L-1
(`send(rows)` in place of `next()`), they wait there (`Joining`, which the pass reports holding)
until that pass finishes layer L-1, then join it: from layer L on both run as one pass, attention
per row group and the MLP half on their packed tokens, and the pass returns every row's token. At
layer granularity the suspended pass is at layer L-1's end, so they join at once; at expert
granularity it may be inside layer L-1 (after its attention or an expert group), and then finishes
that layer's remaining experts for its own rows first: rows join only at a layer boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import torch
from transformers import PreTrainedModel

from qllm.modeling import rotary
from qllm.modeling.adapters import adapter_for
from qllm.modeling.adapters.decoder import LayerParts
from qllm.errors import ConfigurationError
from qllm.executor import ATTENTION, Checkpoint, ForwardPass, check_catch_up, check_granularity
from qllm.kv import KVPool, SequenceKV
from qllm.memory import HeldTensors
from qllm.modeling.moe import ExpertByExpert, MoeParts
from qllm.real.row_groups import RowGroup, last_tokens, pack, real_slots, rows_by_phase, unpack
from qllm.sequence import Sequence
from qllm.real.unified_cache import UnifiedDynamicCache

MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take an explicit 4D padding mask
PAD_TOKEN_ID = 0  # fills padded query slots; any id in the vocabulary works, the mask hides them


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
        self.adapter = adapter_for(model)
        self.kv_pool = KVPool(self.adapter.kv, model.dtype, model.device, kv_block_size)
        self.granularity = granularity
        self.experts_per_checkpoint = experts_per_checkpoint  # experts run between two checkpoints (expert granularity)
        self.num_layers = len(self.adapter.layers)
        self.uses_additive_mask = attention == "eager"  # eager adds the mask to the attention scores

    def new_kv(self) -> SequenceKV:
        return SequenceKV(self.kv_pool)

    def forward(self, batch: list[Sequence], may_stop=None) -> ForwardPass:
        """One forward pass over `batch`; returns (StopIteration.value) each sequence's greedy next token.
        It yields at every checkpoint, whatever `may_stop` says (qllm.executor.Executor).

        Each sequence feeds its uncached tokens (whole prompt at prefill, last token at decode;
        a batch may mix both). Decode rows and prompt rows attend in separate row groups, each
        right-padded, and a layer's MLP half runs on the real tokens only (`qllm.real.row_groups`);
        a batch of one group without padding calls each layer whole. New keys and values are
        committed when the pass completes; a pass closed before that leaves every cache as it was.
        Appending the tokens to `output_ids` is the engine's job.

        Rows sent at a checkpoint (`CaughtUpRows`, from `catch_up`) join at the next layer boundary:
        their row groups attend on their own and share the MLP half; the pass then returns tokens
        for `batch` followed by their rows, and commits (or, closed, releases) their caches too.
        """
        return self._start(batch, self.num_layers)

    def catch_up(self, batch: list[Sequence], num_layers: int, may_stop=None) -> ForwardPass:
        """`batch` through layers 0..num_layers-1, to join a pass waiting at layer `num_layers`
        (qllm.executor.Executor.catch_up): `forward`'s checkpoints but the last layer's end, where it
        returns its rows (`CaughtUpRows`) with their caches in flight."""
        check_catch_up(num_layers, self.num_layers)
        return self._start(batch, num_layers)

    def _start(self, batch: list[Sequence], num_layers: int) -> ForwardPass:
        state = HeldTensors()
        return ForwardPass(self._pass(batch, num_layers, state), state)

    def _pass(
        self, batch: list[Sequence], num_layers: int, state: HeldTensors
    ) -> Generator[Checkpoint, CaughtUpRows | None, list[int] | CaughtUpRows]:
        """Layers 0..num_layers-1 over `batch`; the next tokens after the model's last layer, else the
        rows. It records in `state` what the pass keeps at each checkpoint, rows waiting to join included."""
        caches = self._new_caches(batch)
        joining = Joining()  # rows sent at a checkpoint, waiting for the next layer boundary
        is_handed_over = False  # a catch-up pass's caches go with its rows
        try:
            groups, hiddens = self._row_groups(batch, caches)
            state.hold("inputs", *groups)
            state.hold("joining", joining)  # read when measured: whatever waits then
            num_rows = len(batch)
            for index in range(num_layers):
                while joining.rows:  # no loop variable: a suspended pass keeps no stale reference to their inputs
                    groups, hiddens, num_rows = self._join(index, joining.rows[0], groups, hiddens, caches, num_rows)
                    del joining.rows[0]  # theirs are the pass's caches now
                    state.hold("inputs", *groups)  # the rows that joined are the pass's own row groups now
                whole_layers = self.granularity != "expert" and len(groups) == 1 and groups[0].real_slots is None
                ends_pass = index == num_layers - 1 and num_layers < self.num_layers  # a catch-up's last layer
                if whole_layers:
                    hiddens = [self._run_layer(index, hiddens[0], groups[0])]
                else:
                    state.hold("residual", *hiddens)  # the layer's input, until its output replaces it
                    hiddens = yield from self._run_layer_by_parts(index, hiddens, groups, state, joining, ends_pass)
                if self.granularity == "layer" and not ends_pass:
                    state.hold("residual", *hiddens)
                    joining.wait((yield Checkpoint(layer=index)))
            if joining.rows:
                raise ValueError("rows sent to a pass after its last layer's checkpoint cannot join it")
            if num_layers < self.num_layers:
                is_handed_over = True
                return CaughtUpRows(num_rows, num_layers, caches, groups, hiddens)
            next_token_ids = self._greedy_next_tokens(last_tokens(hiddens, groups, num_rows))
            for cache in caches:
                cache.commit()
            return next_token_ids
        finally:
            state.clear()
            if not is_handed_over:
                for cache in caches:
                    cache.release()
                for rows in joining.rows:
                    rows.release()

    @staticmethod
    def _join(
        index: int, rows: CaughtUpRows, groups: list[RowGroup], hiddens: list[torch.Tensor],
        caches: list[UnifiedDynamicCache], num_rows: int,
    ) -> tuple[list[RowGroup], list[torch.Tensor], int]:
        """`rows` join the pass before layer `index`, after its own rows; their caches become the pass's."""
        if rows.num_layers != index:
            raise ValueError(f"rows run through layers 0..{rows.num_layers - 1} cannot join a pass at layer {index}")
        caches.extend(rows.caches)
        shifted = [dataclasses.replace(g, rows=tuple(num_rows + r for r in g.rows)) for g in rows.groups]
        return groups + shifted, hiddens + rows.hiddens, num_rows + rows.num_rows

    def _new_caches(self, batch: list[Sequence]) -> list[UnifiedDynamicCache]:
        """One cache per row group (`rows_by_phase`); none is left in flight if one cannot be made."""
        caches = []
        try:
            for rows in rows_by_phase(batch):
                kvs, num_new_tokens = [batch[r].kv for r in rows], [batch[r].num_new_tokens for r in rows]
                caches.append(UnifiedDynamicCache(kvs, num_new_tokens, self.num_layers))
        except ValueError as error:
            for cache in caches:
                cache.release()
            raise ValueError(f"batch {[seq.request_id for seq in batch]}: {error}") from error
        return caches

    @torch.no_grad()
    def _row_groups(
        self, batch: list[Sequence], caches: list[UnifiedDynamicCache]
    ) -> tuple[list[RowGroup], list[torch.Tensor]]:
        """Each group's inputs, and its embeddings [rows, query, hidden]."""
        groups, hiddens = [], []
        for rows, cache in zip(rows_by_phase(batch), caches):
            fed = [batch[r].new_token_ids for r in rows]
            padded = [ids + [PAD_TOKEN_ID] * (cache.query_length - len(ids)) for ids in fed]
            hidden = self.adapter.embed_tokens(torch.tensor(padded, device=self.model.device))
            position_ids = cache.position_ids(self.model.device)
            windows = self.adapter.sliding_windows
            masks = {window: self._attention_mask(cache, window, hidden.dtype) for window in set(windows)}
            position_embeddings = rotary.position_embeddings(self.adapter.rotary_emb, hidden, position_ids)
            slots = real_slots(cache)
            groups.append(RowGroup(rows, cache, position_ids, position_embeddings, tuple(masks[w] for w in windows),
                                   None if slots is None else slots.to(self.model.device)))  # fmt: skip
            hiddens.append(hidden)
        return groups, hiddens

    def _attention_mask(self, cache: UnifiedDynamicCache, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        mask = cache.attention_mask(window, self.model.device)  # bool [batch, 1, query, key]
        if self.uses_additive_mask:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask

    @torch.no_grad()
    def _run_layer(self, index: int, hidden: torch.Tensor, group: RowGroup) -> torch.Tensor:
        """Layer `index` called whole: [rows, query, hidden] -> [rows, query, hidden]."""
        return self.adapter.layers[index](
            hidden,
            position_embeddings=group.position_embeddings,
            attention_mask=group.attention_masks[index],
            position_ids=group.position_ids,
            cache=group.cache,
        )

    def _run_layer_by_parts(
        self, index: int, hiddens: list[torch.Tensor], groups: list[RowGroup], state: HeldTensors,
        joining: Joining, ends_pass: bool = False,
    ) -> Generator[Checkpoint, CaughtUpRows | None, list[torch.Tensor]]:
        """Layer `index` in halves: attention per row group, then the MLP half on the packed real
        tokens; returns each group's output [rows, query, hidden]. At expert granularity it
        checkpoints after the attention half, after each expert group, and at the layer's end (unless
        the layer `ends_pass`: a catch-up's last); rows sent at a checkpoint wait in `joining`.
        Every step it takes runs under no_grad itself.
        """
        parts: LayerParts = self.adapter.parts[index]
        attended = [parts.attend(h, g.position_embeddings, g.attention_masks[index], g.position_ids, g.cache)
                    for h, g in zip(hiddens, groups)]  # fmt: skip
        tokens = pack(attended, groups)  # [tokens, hidden]
        del attended  # a suspended pass keeps the packed tokens only
        by_experts = self.granularity == "expert"
        if by_experts:
            state.hold("mlp", tokens)
            joining.wait((yield Checkpoint(layer=index, expert=ATTENTION)))
        mlp_input = parts.mlp_input(tokens)  # [tokens, hidden]
        if parts.moe is None or not by_experts:  # a dense MLP, or the MoE block called whole
            mlp_output, last_expert = parts.run_mlp(mlp_input[None])[0], None
        else:
            state.hold("mlp", tokens, mlp_input)
            mlp_output, last_expert = yield from self._run_experts(index, parts.moe, mlp_input, state, joining)
        tokens = parts.finish_mlp(tokens, mlp_output)
        if by_experts and not ends_pass:
            state.hold("mlp", tokens, mlp_input, mlp_output)
            joining.wait((yield Checkpoint(layer=index, expert=last_expert)))
        state.drop("mlp")
        return unpack(tokens, groups)

    def _run_experts(
        self, index: int, moe_parts: MoeParts, mlp_input: torch.Tensor, state: HeldTensors, joining: Joining
    ) -> Generator[Checkpoint, CaughtUpRows | None, tuple[torch.Tensor, int]]:
        """Layer `index`'s MoE block on [tokens, hidden], a checkpoint after each expert group but the
        last (the layer's own checkpoint follows it); returns (its output [tokens, hidden], the last expert)."""
        moe = ExpertByExpert(moe_parts, mlp_input)  # routes every token
        state.hold("moe", moe)
        state.routed_tokens = moe.tokens_per_expert
        groups = moe.groups(self.experts_per_checkpoint)
        for number, group in enumerate(groups, start=1):
            for expert in group:
                moe.run(expert)
            if number < len(groups):
                joining.wait((yield Checkpoint(layer=index, expert=group[-1])))
        state.drop("moe")
        state.routed_tokens = None
        return moe.output(), groups[-1][-1]

    @torch.no_grad()
    def _greedy_next_tokens(self, last_hidden: torch.Tensor) -> list[int]:
        logits = self.adapter.lm_head(self.adapter.norm(last_hidden))  # [batch, vocab]
        return logits.argmax(dim=-1).tolist()


@dataclasses.dataclass(frozen=True)
class CaughtUpRows:
    """A catch-up pass's rows after its last layer (qllm.executor.CaughtUp): their row groups, caches
    (in flight, layers 0..num_layers-1 written) and hidden states, ready to join a pass at layer `num_layers`."""

    num_rows: int
    num_layers: int
    caches: list[UnifiedDynamicCache]
    groups: list[RowGroup]  # rows numbered from 0: the pass they join renumbers them after its own
    hiddens: list[torch.Tensor]  # per group, [rows, query, hidden]: the input of layer `num_layers`

    def held_tensors(self) -> list[torch.Tensor]:
        """What the rows keep while they wait to join a pass: their hidden states, each row group's
        inputs and its cache's indices (qllm.real.row_groups.RowGroup.held_tensors)."""
        return [*self.hiddens, *(t for group in self.groups for t in group.held_tensors())]

    def release(self) -> None:
        for cache in self.caches:
            cache.release()


class Joining:
    """Rows sent to a pass at its checkpoints (`send`; `next` sends None), waiting for its next layer
    boundary, oldest first. The pass holds them until they join it (a part of its `HeldTensors`, read
    when measured: `held_tensors`), then as its own row groups."""

    def __init__(self) -> None:
        self.rows: list[CaughtUpRows] = []

    def wait(self, rows: CaughtUpRows | None) -> None:
        """Rows sent at the checkpoint the pass goes on from, if any, wait for its next layer boundary."""
        if rows is not None:
            self.rows.append(rows)

    def held_tensors(self) -> list[torch.Tensor]:
        return [tensor for rows in self.rows for tensor in rows.held_tensors()]
