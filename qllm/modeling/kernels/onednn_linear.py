"""`OneDNNLinear`: an `nn.Linear` that multiplies by a copy of its weight reordered once for oneDNN.

On this project's CPUs, float32 `F.linear` runs MKL, which at decode's few rows takes 2-3x what
the same product takes on a weight reordered once (docs/capacity.md). The module keeps the
original `weight` and `bias` parameters (so `state_dict`, tied weights and `generate` see the
model unchanged) and the reordered copy as a non-persistent buffer (memory: one more copy of
the weight; never saved).
"""

from __future__ import annotations

import torch
from torch import nn

from qllm.modeling.kernels import onednn_ops


class OneDNNLinear(nn.Linear):
    """`source`'s parameters, held, with their oneDNN copy; same inputs and outputs as `source`."""

    def __init__(self, source: nn.Linear) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a new weight
        self.in_features, self.out_features = source.in_features, source.out_features
        self.weight = source.weight
        self.register_parameter("bias", source.bias)
        self.register_buffer("reordered_weight", onednn_ops.reorder(self.weight), persistent=False)
        self.reordered_from = weight_key(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        if weight_key(self.weight) != self.reordered_from:  # the weight was replaced or written in place
            self.reordered_weight = onednn_ops.reorder(self.weight)
            self.reordered_from = weight_key(self.weight)
        return onednn_ops.linear(x, self.reordered_weight, self.bias)


def weight_key(weight: torch.Tensor) -> tuple[int, int]:
    """Changes when the tensor is replaced or written in place (`load_state_dict` copies in place)."""
    return weight.data_ptr(), weight._version
