"""Expert by expert: the MoE runner against each block's own forward, the layer split against the
whole layer, and the LS wait bound that expert granularity buys (from the timeline table).

Tolerances, as measured: `ExpertByExpert` equals the block's forward bit for bit (torch.equal)
for every family with the `eager`, `grouped_mm` (CPU default) and `onednn` (`cpu_kernels=onednn`)
experts implementations, in float32 and bfloat16, and with `batched_mm` in bfloat16. `batched_mm` in float32 differs by up to
~3e-9 (torch.bmm picks its kernel by batch count; one expert's rows are a smaller batch), so it
is held to assert_close(atol=1e-6, rtol=1e-5). The layer split is bit-exact.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from harness.engines import RunResources
from harness.results.metrics import timeline_table
from qllm.modeling.adapters import adapter_for
from qllm.executor import ATTENTION
from qllm.modeling.kernels import apply_cpu_kernels
from qllm.modeling.moe import ExpertByExpert
from qllm.real.executor import RealExecutor
from qllm.request import Request
from qllm.sequence import Sequence
from harness.app import compose_config
from tests.helpers import engine_config, ls_waits, make_request, replay_on_steps

FAMILIES = {  # family -> (model yaml, overrides down to 4 experts)
    "mixtral": ("tiny_mixtral", dict(num_local_experts=4)),
    "qwen2_moe": ("tiny_qwen2_moe", dict(num_experts=4)),
    "qwen3_moe": ("tiny_qwen3_moe", dict(num_experts=4, num_experts_per_tok=3)),
    "olmoe": ("tiny_olmoe", dict(num_experts=4, num_experts_per_tok=3)),
    "phimoe": ("tiny_phimoe", dict(num_local_experts=4)),
    "granitemoe": ("tiny_granitemoe", dict(num_local_experts=4)),
    "granitemoeshared": ("tiny_granitemoeshared", dict(num_local_experts=4)),
}
IMPLEMENTATIONS = ["eager", "grouped_mm", "batched_mm", "onednn"]
TOKEN_COUNTS = [1, 2, 5, 17, 40]


def family_model(family: str, implementation: str = "grouped_mm", dtype=torch.float32, num_layers: int = 1):
    name, overrides = FAMILIES[family]
    cfg = compose_config(f"model={name}").model
    config = {**cfg.config, **overrides, "vocab_size": 128, "num_hidden_layers": num_layers}
    hf_config = AutoConfig.for_model(cfg.model_type, **config)
    torch.manual_seed(0)
    if implementation == "onednn":  # its weights are reordered by apply_cpu_kernels, not by transformers
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
        return apply_cpu_kernels(model.eval(), "onednn")
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, experts_implementation=implementation)
    return model.eval()


def run_all_units(parts, tokens: torch.Tensor) -> torch.Tensor:
    moe = ExpertByExpert(parts, tokens)
    for unit in moe.units:
        moe.run(unit)
    return moe.output()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_expert_by_expert_equals_the_blocks_own_forward(family, implementation, dtype):
    model = family_model(family, implementation, dtype)
    layer, layer_parts = model.model.layers[0], adapter_for(model).parts[0]
    block, parts = layer_parts.mlp, layer_parts.moe
    generator = torch.Generator().manual_seed(1)
    for num_tokens in TOKEN_COUNTS:
        tokens = torch.randn(1, num_tokens, model.config.hidden_size, generator=generator).to(dtype)  # [1, n, hidden]
        with torch.no_grad():
            expected = block(tokens)[0]  # [tokens, hidden]
            if family == "granitemoeshared":  # its shared MLP sits beside the block: the layer adds it
                expected = expected + layer.shared_mlp(tokens)[0]
        actual = run_all_units(parts, tokens[0])
        if implementation == "batched_mm" and dtype == torch.float32:
            torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)
        else:
            assert torch.equal(actual, expected), (family, implementation, dtype, num_tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_layer_run_in_halves_equals_the_whole_layer(family):
    model = family_model(family)
    layer, parts = model.model.layers[0], adapter_for(model).parts[0]
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 6, model.config.hidden_size, generator=generator)  # [batch, query, hidden]
    position_ids = torch.arange(6).expand(2, 6)
    position_embeddings = model.model.rotary_emb(hidden, position_ids=position_ids)
    with torch.no_grad():
        expected = layer(hidden, position_embeddings=position_embeddings, position_ids=position_ids)
        attended = parts.attend(hidden, position_embeddings, None, position_ids, None)
        mlp_input = parts.mlp_input(attended).reshape(-1, hidden.shape[-1])
        by_experts = parts.finish_mlp(attended, run_all_units(parts.moe, mlp_input).view_as(hidden))
        whole_mlp = parts.finish_mlp(attended, parts.run_mlp(mlp_input[None])[0].view_as(hidden))  # packed tokens
    assert torch.equal(by_experts, expected) and torch.equal(whole_mlp, expected)


def test_units_run_once_each_in_order_and_group_into_checkpoints():
    parts = adapter_for(family_model("qwen2_moe")).parts[0].moe
    moe = ExpertByExpert(parts, torch.randn(9, 64, generator=torch.Generator().manual_seed(3)))
    assert moe.units[-1] == 4 and moe.units[:-1] == sorted(set(moe.index.flatten().tolist()))  # shared expert last
    assert sum(moe.groups(2), []) == moe.units and all(len(g) <= 2 for g in moe.groups(2))
    with pytest.raises(RuntimeError, match="have not run yet"):
        moe.output()
    with pytest.raises(RuntimeError, match="expected"):
        moe.run(moe.units[1])


@pytest.mark.parametrize("experts_per_checkpoint", [1, 2])
def test_expert_granularity_holds_an_ls_prefill_back_by_at_most_one_expert_group(config, experts_per_checkpoint):
    cfg = engine_config(config, "qllm", granularity="expert", experts_per_checkpoint=experts_per_checkpoint)
    resources = RunResources(config, model=family_model("mixtral", num_layers=2))
    be = [make_request(i, 20 + i, 10, "BE", 0.0) for i in range(3)]
    ls = [make_request(3 + i, 6, 2, "LS", t) for i, t in enumerate([3.5, 17.5, 40.5, 77.5, 101.5])]
    recorder = replay_on_steps(resources, cfg, be + ls)
    classes = {r.request_id: r.priority_class for r in be + ls}
    timeline = timeline_table(recorder, "run", "qllm", classes)
    waits = ls_waits(timeline, be + ls, recorder)
    assert sum(len(w) == 1 for w in waits.values()) >= 3, "most LS requests should arrive while BE work runs"
    for request_id, quanta in waits.items():
        assert len(quanta) <= 1, (request_id, quanta)
        for q in quanta:  # an attention half or one expert group; or the pass's last stage (norm + LM head)
            assert not pd.isna(q.expert) or pd.isna(q.layer), q


def test_a_pass_suspended_between_experts_holds_plain_tensors():
    """Grad mode on (as outside the tests): the state a suspended pass keeps, as its executor reports
    it (the MoE block's routing and partial sums among it), builds no autograd graph."""
    model = family_model("qwen2_moe", num_layers=2)
    executor = RealExecutor(model, granularity="expert")
    sequence = Sequence(Request("r0", 0.0, 9, 1, "BE", 1), list(range(1, 10)), executor.new_kv())
    forward_pass = executor.forward([sequence])
    with torch.enable_grad():
        while next(forward_pass).expert in (None, ATTENTION):  # stop after the first expert group
            pass
    tensors = forward_pass.state.tensors()
    assert forward_pass.routed_tokens is not None and len(tensors) > 10
    assert not any(t.requires_grad for t in tensors)
    forward_pass.close()
