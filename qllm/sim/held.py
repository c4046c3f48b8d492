"""What a suspended real pass holds, estimated from shapes: the bytes qllm.memory would measure in
the real executor's frame at a checkpoint (qllm/real_executor.py), for the simulator to account.

At every checkpoint the frame keeps the residual stream and the pass's inputs (the embeddings, the
position embeddings, the position ids and one attention mask per window). Inside an MoE block it
also keeps the block's input, the routing (weights and expert index per token and slot) and the
partial sums: one running sum per token (`eager` experts) or one output per token and slot
(`grouped_mm`, `batched_mm`). After a layer's MLP half it keeps that half's input and output.
tests/test_sim_executor.py checks the estimate against the real executor's measured bytes.
"""

from __future__ import annotations

from qllm.sim.cost_model import PassShape
from qllm.sim.plan import AFTER_MLP, AT_BOUNDARY, IN_MOE
from qllm.sim.shape import ModelShape

INDEX_BYTES = 8  # int64: position ids, expert indices
ROUTING_WEIGHT_BYTES = 4  # routers weigh in float32
MASK_BYTES = 1  # sdpa's boolean mask


def held_bytes(model: ModelShape, shape: PassShape, fed_tokens: int, table_slots: int, kind: int, layer: int) -> int:
    """At a checkpoint of `kind` in `layer`, for a pass of `shape` feeding `fed_tokens` real tokens
    whose cache gathers `table_slots` blocks (batch x the longest block table)."""
    tokens, hidden = shape.num_tokens, model.hidden_size
    activation = tokens * hidden * model.dtype_bytes  # one [batch, query, hidden] tensor
    # The embeddings the pass started from and the residual stream; inside a layer run in halves
    # (past the first) also the layer's input, which the embeddings no longer are.
    held = (3 if kind != AT_BOUNDARY and layer > 0 else 2) * activation
    held += 2 * tokens * model.head_dim * model.dtype_bytes  # cos and sin
    held += tokens * INDEX_BYTES  # position ids
    held += model.num_mask_windows * shape.batch_size * shape.query_len * shape.key_len * MASK_BYTES
    held += 3 * fed_tokens * INDEX_BYTES  # the cache's write index: (pool slot, row, query slot) per real token
    held += table_slots * INDEX_BYTES  # and its gather index: the batch's block tables
    if kind == IN_MOE:
        slots = tokens * model.top_k
        sums = activation if model.sums_in_expert_order else slots * hidden * max(model.dtype_bytes, ROUTING_WEIGHT_BYTES)
        held += activation + slots * (ROUTING_WEIGHT_BYTES + INDEX_BYTES) + sums
    elif kind == AFTER_MLP:
        held += 2 * activation
    return held
