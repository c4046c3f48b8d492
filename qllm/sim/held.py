"""What a suspended real pass holds, estimated from shapes: the bytes the real executor reports
(`ForwardPass.held_bytes`, qllm/real/executor.py) at a checkpoint, for the simulator to account.

At every checkpoint the pass keeps the residual stream, padded [batch, query, hidden], and the
pass's inputs (position embeddings, position ids, one attention mask per window, and where rows are
padded the index of the real tokens). Inside a layer run in halves it also keeps the packed real
tokens [tokens, hidden] (qllm.real.row_groups): after attention, the attended tokens; inside an MoE
block, those, the block's input, the routing (weights and expert index per token and slot, and the
index's sort by expert) and the
partial sums: one running sum per token (`eager` experts) or one output per token and slot
(`grouped_mm`, `batched_mm`); after the MLP half, its input and output and the layer's output.
tests/test_sim_executor.py checks the estimate against the bytes the real executor reports.
"""

from __future__ import annotations

from qllm.sim.cost_model import PassShape
from qllm.sim.plan import AFTER_ATTENTION, AFTER_MLP, IN_MOE
from qllm.sim.shape import ModelShape

INDEX_BYTES = 8  # int64: position ids, expert indices
ROUTING_WEIGHT_BYTES = 4  # routers weigh in float32
MASK_BYTES = 1  # sdpa's boolean mask


def held_bytes(model: ModelShape, shape: PassShape, table_slots: int, kind: int) -> int:
    """At a checkpoint of `kind` (in any layer: every layer holds alike), for a pass of `shape` whose
    cache gathers `table_slots` blocks (batch x the longest block table)."""
    tokens, real, hidden = shape.num_tokens, shape.num_real_tokens, model.hidden_size
    activation = real * hidden * model.dtype_bytes  # one packed [tokens, hidden] tensor
    held = tokens * hidden * model.dtype_bytes  # the residual stream
    held += 2 * tokens * model.head_dim * model.dtype_bytes  # cos and sin
    held += tokens * INDEX_BYTES  # position ids
    held += model.num_mask_windows * shape.batch_size * shape.query_len * shape.key_len * MASK_BYTES
    held += real * INDEX_BYTES if real < tokens else 0  # where the real tokens sit among the padded slots
    held += 3 * real * INDEX_BYTES  # the cache's write index: (pool slot, row, query slot) per real token
    held += table_slots * INDEX_BYTES  # and its gather index: the batch's block tables
    if kind == AFTER_ATTENTION:
        held += activation
    elif kind == IN_MOE:
        slots = real * model.top_k
        sums = activation if model.sums_in_expert_order else slots * hidden * max(model.dtype_bytes, ROUTING_WEIGHT_BYTES)
        held += 2 * activation + slots * (ROUTING_WEIGHT_BYTES + 2 * INDEX_BYTES) + sums  # weights, index, its sort
    elif kind == AFTER_MLP:
        held += 3 * activation
    return held
