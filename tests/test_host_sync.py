"""No needless host synchronization in a pass: on a GPU every `nonzero`, `.item()`, `.tolist()`,
boolean-mask index or `unique` stalls the stream until the GPU catches up. Counted here on the CPU,
op by op, while the real executor runs passes (prefills with padding, then a mixed batch): at most
one per decoder layer at any granularity (a MoE block may read its expert schedule once), none in
attention, none before the first layer, and one after the last (the next tokens, read once)."""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from harness.app import compose_config
from harness.engines import RunResources
from qllm.executor import run_to_completion
from qllm.real.executor import RealExecutor
from qllm.request import Request
from qllm.sequence import Sequence
from tests.test_families import QUIRKS, SHRINK

aten = torch.ops.aten
SYNCING_OPS = {  # ops whose result size or value the host must wait for
    aten._local_scalar_dense.default, aten.nonzero.default, aten._unique.default, aten._unique2.default,
    aten.unique_dim.default, aten.unique_consecutive.default, aten.masked_select.default, aten.bincount.default,
    aten.equal.default, aten.repeat_interleave.Tensor,
}  # fmt: skip
MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
SYNCING_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy}  # read the data directly: no aten op on the CPU


def is_boolean_mask_index(func, args) -> bool:
    indices = args[1] if func in MASK_INDEXING and len(args) > 1 else ()
    return any(i is not None and i.dtype == torch.bool for i in indices)


class SyncCounter(TorchDispatchMode):
    """Counts syncing ops per region: "before" the layers, ("layer", i), ("attention", i), "after"."""

    def __init__(self) -> None:
        super().__init__()
        self.region = "before"
        self.counts: Counter = Counter()
        self.ops: list = []

    def record(self, what) -> None:
        self.counts[self.region] += 1
        self.ops.append((self.region, what))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING_OPS or is_boolean_mask_index(func, args):
            self.record(func)
        return func(*args, **(kwargs or {}))


class MethodCounter(TorchFunctionMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCING_METHODS:
            self.counter.record(func.__name__)
        return func(*args, **(kwargs or {}))


def watch_regions(model, counter: SyncCounter) -> list:
    """Hooks that tell the counter where the pass is."""
    def enter(region):
        def hook(*_):
            counter.region = region
        return hook

    handles = [model.model.embed_tokens.register_forward_pre_hook(enter("before")),
               model.model.norm.register_forward_pre_hook(enter("after"))]  # fmt: skip
    for index, layer in enumerate(model.model.layers):
        handles += [module.register_forward_pre_hook(enter(("layer", index))) for module in layer.modules()]
        handles.append(layer.self_attn.register_forward_pre_hook(enter(("attention", index))))
        handles.append(layer.self_attn.register_forward_hook(enter(("layer", index))))
    return handles


@cache
def model_of(family: str, quantization: str | None):
    overrides = [f"++model.config.{key}={value}" for key, value in {**SHRINK, **QUIRKS[family]}.items()]
    quantized = ["model.quantization=bnb4"] if quantization else []
    return RunResources(compose_config(f"model=tiny_{family}", *quantized, *overrides)).model


def counted_passes(model, granularity: str) -> list[SyncCounter]:
    """Syncs of three passes: two padded prompts; their decode rows beside a new prompt; decode alone."""
    executor = RealExecutor(model, granularity=granularity)
    seqs = [Sequence(Request(f"r{i}", 0.0, n, 4, "BE", 1), list(range(3, 3 + n)), executor.new_kv())
            for i, n in enumerate((7, 4, 5))]  # fmt: skip
    counters = []
    for batch in (seqs[:2], seqs, seqs):
        counter = SyncCounter()
        handles = watch_regions(model, counter)
        try:
            with counter, MethodCounter(counter):
                tokens = run_to_completion(executor.forward(batch))
        finally:
            for handle in handles:
                handle.remove()
        for seq, token in zip(batch, tokens):
            seq.output_ids.append(token)
        counters.append(counter)
    return counters


CASES = [(family, None) for family in QUIRKS] + [("mixtral", "bnb4"), ("qwen2_moe", "bnb4")]


@pytest.mark.parametrize("granularity", ["iteration", "layer", "expert"])
@pytest.mark.parametrize("family, quantization", CASES)
def test_a_pass_syncs_at_most_once_per_layer_and_never_in_attention(family, quantization, granularity):
    model = model_of(family, quantization)
    for counter in counted_passes(model, granularity):
        per_region = dict(counter.counts)
        layers = [region for region in per_region if isinstance(region, tuple) and region[0] == "layer"]
        assert all(per_region[region] <= 1 for region in layers), counter.ops
        assert not any(isinstance(region, tuple) and region[0] == "attention" for region in per_region), counter.ops
        assert per_region.get("before", 0) == 0 and per_region.get("after", 0) == 1, counter.ops
