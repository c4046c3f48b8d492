"""The analytic cost model: a named GPU's memory bandwidth and peak FLOP rate, applied to the bytes
and FLOPs of each stage of the real executor, plus the host's cost of each operator it dispatches.

A stage's device time is max(bytes moved / memory bandwidth, FLOPs / peak): weights (4-bit NF4 or
the compute dtype), keys and values, activations. Its host time is the number of PyTorch operators
the real executor dispatches for it times `op_overhead_s`, added to the device time rather than
overlapped with it, since the executor reads sizes on the host inside every stage (`torch.unique`
per MoE block, `torch.nonzero` per expert, `.tolist()` per pass), which waits for the device.

NF4 (bitsandbytes): 0.5 byte per weight plus its block's absmax (`nf4_bytes_per_param`); a matmul
on more than `fused_4bit_max_rows` rows first dequantizes the weight to the compute dtype (writing
and reading it once more), as bitsandbytes' `matmul_4bit` did. Every constant and its source is in
the config (conf/hardware/*.yaml); docs/reproducing.md compares the result with what the paper's
authors report.
"""

from __future__ import annotations

import numpy as np

from qllm.sim.cost_model import PassShape, StageCosts
from qllm.sim.shape import ModelShape


class AnalyticCostModel:
    def __init__(
        self,
        model: ModelShape,
        memory_bandwidth_Bps: float,
        peak_flops: float,
        op_overhead_s: float,
        ops: dict[str, int],
        nf4_bytes_per_param: float,
        fused_4bit_max_rows: int,
        quantized_experts: bool,
        checkpoint_s: float,
        pass_overhead_s: float,
    ) -> None:
        """`ops`: operators the real executor dispatches per stage: pass_start, attention, router,
        expert (one routed expert), combine, moe_block (a whole MoE block, layer granularity), mlp (a
        gated MLP called whole: a shared expert, a dense layer's MLP), pass_end."""
        self.model = model
        self.bandwidth = memory_bandwidth_Bps
        self.peak_flops = peak_flops
        self.op_s = {stage: count * op_overhead_s for stage, count in ops.items()}  # host seconds per stage
        self.nf4_bytes = nf4_bytes_per_param
        self.fused_rows = fused_4bit_max_rows
        self.op_overhead_s = op_overhead_s
        self.quantized_experts = quantized_experts and model.is_4bit
        self.checkpoint_s = checkpoint_s
        self.pass_overhead_s = pass_overhead_s
        intermediate = model.expert_params // (3 * model.hidden_size)  # a gated MLP: 3 matrices
        # One routed expert on m rows: weights, then per row its activations (in, gate/up, act, down, out) and FLOPs.
        self.expert_bytes_per_row = (2 * model.hidden_size + 6 * intermediate) * model.dtype_bytes
        self.expert_flops_per_row = 2 * model.expert_params

    def stage_costs(self, shape: PassShape) -> StageCosts:
        m, tokens = self.model, shape.num_real_tokens  # the MLP half's tokens; attention's are padded
        padded, activation = (n * m.hidden_size * m.dtype_bytes for n in (shape.num_tokens, tokens))
        attention = self._attention_s(shape)
        router = self._device_s(self._weight_bytes(m.router_params, tokens, m.is_4bit) + activation,
                                2 * tokens * m.router_params)  # fmt: skip
        shared = self._mlp_s(m.shared_expert_params, tokens) if m.has_shared_expert else 0.0
        masks = shape.batch_size * shape.query_len * shape.key_len  # booleans
        return StageCosts(
            pass_start_s=self._device_s(2 * padded + masks, 0) + self.op_s["pass_start"],
            attention_s=attention,
            router_s=router + self.op_s["router"],
            combine_s=self._device_s(3 * activation, 0) + self.op_s["combine"],
            shared_expert_s=shared,
            dense_mlp_s=self._mlp_s(m.dense_mlp_params, tokens),
            layer_s=self._whole_layer_s(tokens, attention + router + shared),
            pass_end_s=self._device_s(m.lm_head_params * m.dtype_bytes, 2 * shape.batch_size * m.lm_head_params)
            + self.op_s["pass_end"],
            checkpoint_s=self.checkpoint_s,
            pass_overhead_s=self.pass_overhead_s,
        )

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        return np.array([self._expert_s(float(rows)) for rows in np.ravel(tokens)]).reshape(np.shape(tokens))

    def idle_s(self, gap_s: float) -> float:
        """Nothing: the datasheet rates price a device kept busy; what waking it costs is not modelled."""
        return 0.0

    def wake_s(self, gap_s: float) -> float:
        """Nothing: a request is batched the moment it arrives (the host's latency is not modelled)."""
        return 0.0

    def after_prompts_s(self, prompt_tokens: int, step_after: int, decode_s: float) -> float:
        """Nothing: the datasheet rates price each pass on its own."""
        return 0.0

    def in_run_passes(self, granularity: str) -> list:
        """None: nothing was run."""
        return []

    def _expert_s(self, rows: float) -> float:
        """One routed expert run on `rows` tokens (0: it does not run)."""
        if rows <= 0:
            return 0.0
        moved = self._weight_bytes(self.model.expert_params, rows, self.quantized_experts) + rows * self.expert_bytes_per_row
        device = self._device_s(moved, rows * self.expert_flops_per_row)
        dequantize = 3 * self.op_overhead_s if self.quantized_experts and rows > self.fused_rows else 0.0
        return device + self.op_s["expert"] + dequantize

    def _attention_s(self, shape: PassShape) -> float:
        """Projections, the attention itself over the padded keys (and its mask), the cache write."""
        m, tokens = self.model, shape.num_tokens
        kv = shape.batch_size * shape.key_len * m.kv_bytes_per_token // m.num_layers  # one layer's keys and values
        mask = shape.batch_size * shape.query_len * shape.key_len
        activations = 4 * tokens * m.hidden_size * m.dtype_bytes
        weights = self._weight_bytes(m.attention_params, tokens, m.is_4bit)
        flops = 2 * tokens * m.attention_params + 4 * tokens * shape.key_len * m.num_heads * m.head_dim
        host = self.op_s["attention"] + (4 * self.op_overhead_s if m.is_4bit and tokens > self.fused_rows else 0.0)
        return self._device_s(weights + kv + mask + activations, flops) + host

    def _whole_layer_s(self, tokens: int, attention_router_shared_s: float) -> float:
        """An MoE layer called whole, at the expected uniform routing: each expert receives tokens
        with probability 1 - (1 - k/E)^tokens, and the routed tokens split evenly among those that do.
        Its host work is the whole block's operators, not each expert's."""
        m = self.model
        expected_hit = m.num_experts * (1 - (1 - m.top_k / m.num_experts) ** tokens)
        per_expert = self._expert_s(tokens * m.top_k / expected_hit) - self.op_s["expert"]
        return attention_router_shared_s + expected_hit * per_expert + self.op_s["moe_block"]

    def _mlp_s(self, params: int, rows: int) -> float:
        """A gated MLP called whole (a shared expert, a dense layer's MLP)."""
        if params == 0:
            return 0.0
        quantized = self.model.is_4bit
        weights = self._weight_bytes(params, rows, quantized)
        activations = 4 * rows * self.model.hidden_size * self.model.dtype_bytes
        dequantize = 3 * self.op_overhead_s if quantized and rows > self.fused_rows else 0.0
        return self._device_s(weights + activations, 2 * rows * params) + self.op_s["mlp"] + dequantize

    def _weight_bytes(self, params: int, rows: int, quantized: bool) -> float:
        """Bytes of `params` weights read by a matmul over `rows` rows."""
        if not quantized:
            return float(params * self.model.dtype_bytes)
        dequantized = params * 2 * self.model.dtype_bytes if rows > self.fused_rows else 0  # written, then read by the GEMM
        return params * self.nf4_bytes + dequantized

    def _device_s(self, num_bytes: float, flops: float) -> float:
        return max(num_bytes / self.bandwidth, flops / self.peak_flops)
