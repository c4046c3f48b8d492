"""4-bit (`quantization: bnb4`) models of every family: linears and routed experts in NF4, token-exact
against `generate` on the same quantized model under preemption at every granularity, and logits
equal to a stock model holding the same NF4 weights dequantized (qllm.modeling.nf4_model,
qllm.modeling.kernels.nf4_experts).

Each family's model is its tiny config shrunk with its quirks switched on (tests/test_families.py).
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from bitsandbytes.functional import dequantize_4bit
from bitsandbytes.nn import Linear4bit
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM

from harness.app import compose_config
from harness.engines import RunResources
from qllm.modeling.kernels.nf4_experts import NF4, nf4_bytes
from qllm.modeling.kernels.onednn import experts_modules
from tests.helpers import engine_config, oracle_tokens, replay_on_steps, requests_of
from tests.test_families import ENGINE_AT, GRANULARITIES, QUIRKS, SHRINK

NOT_IN_NF4 = {"gpt_oss": "experts with biases"}  # refused in one line (test below)
FAMILIES = [family for family in QUIRKS if family not in NOT_IN_NF4]
SPECS = [(10, 5, "BE", 0), (9, 5, "BE", 0), (5, 3, "LS", 1.5), (6, 3, "LS", 4.5)]


def bnb4_config(family: str):
    overrides = [f"++model.config.{key}={value}" for key, value in {**SHRINK, **QUIRKS[family]}.items()]
    return compose_config(f"model=tiny_{family}", "model.quantization=bnb4", "engine=[qllm,priority_cb]", *overrides)


@cache
def family_resources(family: str) -> RunResources:
    return RunResources(bnb4_config(family))


@cache
def expected_tokens(family: str) -> dict[str, list[int]]:
    model = family_resources(family).model
    return {r.request_id: oracle_tokens(model, r) for r in requests_of(SPECS)}


@pytest.mark.parametrize("family", FAMILIES)
def test_bnb4_holds_linears_and_every_routed_expert_in_nf4(family):
    model = family_resources(family).model
    experts = experts_modules(model)
    assert experts and model.config._experts_implementation == NF4
    for module in experts:
        assert not any(p.dim() == 3 for p in module.parameters(recurse=False)), type(module).__name__
        weights = module.nf4_weights
        assert weights.gate_up_packed.dtype == torch.uint8
        values = sum(torch.Size(shape).numel() for shape in weights.shapes.values()) * module.num_experts
        held = sum(b.numel() * b.element_size() for name, b in weights.named_buffers() if name != "code")
        assert held == nf4_bytes(values)  # half a byte per weight, an absmax per 64
    assert any(isinstance(m, Linear4bit) for m in model.model.layers[0].self_attn.modules())  # MLA has no q_proj
    assert not isinstance(model.lm_head, Linear4bit)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_4bit_model_matches_generate_on_the_same_model_under_preemption(family, granularity):
    resources = family_resources(family)
    engine = ENGINE_AT[granularity]
    cfg = engine_config(resources.cfg, engine, policy__max_batch_size=2, granularity=granularity)
    recorder = replay_on_steps(resources, cfg, requests_of(SPECS), engine)
    assert any(events.preempted_s for events in recorder.requests.values())
    for request_id, expected in expected_tokens(family).items():
        assert recorder.requests[request_id].token_ids == expected, (family, granularity, request_id)


def dequantized_stock_model(model):
    """A stock model of `model`'s architecture (its own experts implementation, nn.Linear layers)
    holding `model`'s NF4 weights dequantized, everything else copied."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    del config.quantization_config
    stock = AutoModelForCausalLM.from_config(config, dtype=model.dtype, attn_implementation=model.config._attn_implementation).eval()
    state, stock_keys = {}, set(stock.state_dict())
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Linear4bit):
            state[prefix + "weight"] = dequantize_4bit(module.weight.data, module.weight.quant_state)
            if module.bias is not None:
                state[prefix + "bias"] = module.bias
        elif hasattr(module, "nf4_weights"):
            state[prefix + "gate_up_proj"] = module.nf4_weights.dequantized("gate_up")
            state[prefix + "down_proj"] = module.nf4_weights.dequantized("down")
        for key, param in module.named_parameters(recurse=False):
            state.setdefault(prefix + key, param)
        for key, buffer in module.named_buffers(recurse=False):  # a router's score-correction bias, say
            if prefix + key in stock_keys:
                state.setdefault(prefix + key, buffer)
    missing, unexpected = stock.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in key for key in missing if model.config.tie_word_embeddings), missing
    assert missing == [] or model.config.tie_word_embeddings, missing
    return stock


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_the_nf4_weights_dequantized_into_a_stock_model(family):
    model = instantiate(bnb4_config(family).model)  # fresh: before any forward repacks a CPU Linear4bit
    stock = dequantized_stock_model(model)
    assert stock.config._experts_implementation != NF4
    input_ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = stock(input_ids).logits, model(input_ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", sorted(NOT_IN_NF4))
def test_experts_nf4_cannot_hold_are_refused_in_one_line(family):
    with pytest.raises(Exception) as refused:
        family_resources(family).model
    message = str(refused.value)
    assert "bnb4" in message and NOT_IN_NF4[family] in message and "without quantization" in message
