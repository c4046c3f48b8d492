"""The `nf4` experts implementation: every routed expert's weights in 4-bit NF4 (bitsandbytes).

transformers 5.24 keeps a MoE block's routed experts as two 3-D parameters (`gate_up_proj`
[experts, 2 x intermediate, hidden], `down_proj` [experts, hidden, intermediate]), which
bitsandbytes, replacing `nn.Linear` modules only, leaves in the compute dtype (~90 GB for
Mixtral-8x7B). `quantize_experts` replaces them with `NF4Weights`, the child module `nf4_weights`:
per expert, the packed 4-bit weight and one float32 absmax per block of 64 values, as buffers (so
`.to(device)`, `state_dict` and the memory plan see them), quantized by bitsandbytes'
`quantize_4bit` exactly as it quantizes a `Linear4bit`. The 3-D parameters are dropped.

The forward is grouped_mm's algorithm (as `onednn`'s): the (token, slot) pairs grouped by expert,
each expert's rows through bitsandbytes' `matmul_4bit` (its 4-bit GEMV for one row; dequantize
then GEMM otherwise), one weighted output per pair, summed over the slots. It reads the expert
schedule to the host once per call (one stream sync on a GPU). Given `expert=` (qllm.modeling.moe at expert
granularity, which calls it with one expert's rows) it reads nothing back.
"""

from __future__ import annotations

import torch
from bitsandbytes import matmul_4bit
from bitsandbytes.functional import QuantState, dequantize_4bit, get_4bit_type, quantize_4bit
from torch import nn
from transformers.integrations.moe import ExpertsInterface

from qllm.errors import ConfigurationError
from qllm.modeling.kernels.grouped import grouped_by_expert
from qllm.modeling.kernels.onednn_experts import unsupported_reason
from qllm.modeling.moe import expert_counts

NF4 = "nf4"  # the implementation's name in ExpertsInterface
BLOCKSIZE = 64  # values per absmax: bitsandbytes' default, as BitsAndBytesConfig uses it
PROJECTIONS = ("gate_up", "down")


def nf4_bytes(num_values: int, blocksize: int = BLOCKSIZE) -> int:
    """Bytes of `num_values` weights in NF4: two per byte, plus a float32 absmax per block."""
    return (num_values + 1) // 2 + -(-num_values // blocksize) * 4


class NF4Weights(nn.Module):
    """Each expert's gate_up and down weights in NF4: `<proj>_packed` [experts, values / 2] uint8,
    `<proj>_absmax` [experts, values / 64] float32, and the NF4 code book `code` [16]."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, compute_dtype: torch.dtype, device) -> None:
        super().__init__()
        self.compute_dtype = compute_dtype
        self.shapes = {"gate_up": tuple(gate_up.shape[1:]), "down": tuple(down.shape[1:])}  # each [out, in]
        for name, weight in zip(PROJECTIONS, (gate_up, down)):
            packed, absmax = zip(*(quantized(expert.to(device)) for expert in weight))  # one expert at a time
            self.register_buffer(f"{name}_packed", torch.stack(packed))
            self.register_buffer(f"{name}_absmax", torch.stack(absmax))
        self.register_buffer("code", get_4bit_type("nf4", device=self.gate_up_packed.device))

    def state(self, name: str, expert: int) -> QuantState:
        absmax = getattr(self, f"{name}_absmax")[expert]
        return QuantState(absmax, shape=torch.Size(self.shapes[name]), code=self.code, blocksize=BLOCKSIZE,
                          quant_type="nf4", dtype=self.compute_dtype)  # fmt: skip

    def linear(self, x: torch.Tensor, name: str, expert: int) -> torch.Tensor:
        """x [rows, in] @ expert's weight.T -> [rows, out]."""
        return matmul_4bit(x, getattr(self, f"{name}_packed")[expert], quant_state=self.state(name, expert))

    def dequantized(self, name: str) -> torch.Tensor:
        """Every expert's weight back in the compute dtype: [experts, out, in] (for a reference model)."""
        packed = getattr(self, f"{name}_packed")
        return torch.stack([dequantize_4bit(packed[e], self.state(name, e)) for e in range(len(packed))])

    def extra_repr(self) -> str:
        return f"experts={len(self.gate_up_packed)}, gate_up={self.shapes['gate_up']}, down={self.shapes['down']}"


def quantized(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One [out, in] weight -> (packed [out * in / 2] uint8, absmax [out * in / 64] float32)."""
    packed, state = quantize_4bit(weight, blocksize=BLOCKSIZE, quant_type="nf4")
    return packed.view(-1), state.absmax


def quantize_module(experts: nn.Module, compute_dtype: torch.dtype, device=None) -> None:
    """Replace `experts`' 3-D weights with `NF4Weights` on `device` (default: where they are)."""
    reason = unsupported_reason(experts)
    if reason is not None:
        raise ConfigurationError(f"model.quantization=bnb4 cannot hold these experts in NF4 ({reason}); "
                                 f"run this model without quantization")
    device = experts.gate_up_proj.device if device is None else device
    experts.nf4_weights = NF4Weights(experts.gate_up_proj.data, experts.down_proj.data, compute_dtype, device)
    del experts.gate_up_proj, experts.down_proj


@torch.no_grad()
def nf4_experts_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    expert: int | None = None,
) -> torch.Tensor:
    """hidden_states [tokens, hidden], top_k_index / top_k_weights [tokens, k] -> [tokens, hidden].
    `expert`: every pair goes to that expert (the caller knows; nothing is read back)."""
    weights: NF4Weights = self.nf4_weights
    flat_index = top_k_index.reshape(-1)
    if expert is None:
        order = torch.argsort(flat_index, stable=True)  # (token, slot) pairs grouped by expert
        counts = expert_counts(flat_index, self.num_experts).tolist()  # the schedule, read once
    else:
        order = torch.arange(flat_index.numel(), device=flat_index.device)
        counts = [flat_index.numel() if e == expert else 0 for e in range(self.num_experts)]

    def run_expert(rows: torch.Tensor, number: int) -> torch.Tensor:
        return weights.linear(self._apply_gate(weights.linear(rows, "gate_up", number)), "down", number)

    return grouped_by_expert(hidden_states, top_k_index, top_k_weights, order, counts, run_expert)


ExpertsInterface.register(NF4, nf4_experts_forward)
