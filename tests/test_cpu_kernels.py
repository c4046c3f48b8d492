"""`cpu_kernels: onednn` (qllm/modeling/kernels): the stock modules' numbers, `generate`'s tokens, clear refusals.

float32: oneDNN's GEMM kernels may round differently from MKL's, so outputs are held to the
tolerance test_moe.py gives `batched_mm`; bfloat16 is bit-identical (bf16 `F.linear` already runs
on oneDNN). The executor on an onednn model matches `generate` on that same model at every
granularity, under preemption (expert by expert: `ExpertByExpert` calls the onednn implementation
one expert at a time; tests/test_moe.py holds it to the block's forward bit for bit).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qllm.modeling.adapters import adapter_for
from qllm.errors import ConfigurationError
from qllm.executor import ATTENTION, run_to_completion
from qllm.modeling.kernels import apply_cpu_kernels
from qllm.modeling.kernels.onednn_linear import OneDNNLinear
from qllm.modeling.models import load_model
from qllm.real.executor import RealExecutor
from tests.test_executor import (
    MIN_MARGIN, append, assert_matches_oracle, make_sequences, oracle, random_prompts, step, unfinished,
)
from tests.test_moe import FAMILIES, family_model

CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=256)  # fmt: skip


def mixtral(dtype: str = "float32", cpu_kernels: str | None = "onednn", seed: int = 0, **config):
    return load_model(model_type="mixtral", config={**CONFIG, **config}, seed=seed, dtype=dtype, cpu_kernels=cpu_kernels)


def assert_same_numbers(actual: torch.Tensor, expected: torch.Tensor) -> None:
    if actual.dtype == torch.bfloat16:
        assert torch.equal(actual, expected)
    else:
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_onednn_moe_blocks_and_lm_head_compute_what_the_stock_modules_do(family, dtype):
    stock, fast = family_model(family, "grouped_mm", dtype), family_model(family, "onednn", dtype)
    assert fast.config._experts_implementation == "onednn" and isinstance(fast.lm_head, OneDNNLinear)
    hidden = torch.randn(1, 23, stock.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        assert_same_numbers(adapter_for(fast).parts[0].mlp(hidden), adapter_for(stock).parts[0].mlp(hidden))
        assert_same_numbers(fast.lm_head(hidden), stock.lm_head(hidden))


def test_the_onednn_lm_head_holds_the_models_parameters_and_follows_their_changes():
    tied = mixtral(tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight  # still tied
    stock, fast = mixtral(cpu_kernels=None, seed=1), mixtral()
    assert fast.state_dict().keys() == stock.state_dict().keys()  # the reordered copies are never saved
    fast.load_state_dict(stock.state_dict())  # other weights, written in place: the next call reorders again
    hidden = torch.randn(3, CONFIG["hidden_size"])
    with torch.no_grad():
        assert_same_numbers(fast.lm_head(hidden), stock.lm_head(hidden))
        assert_same_numbers(fast.model.layers[0].mlp(hidden[None]), stock.model.layers[0].mlp(hidden[None]))


@pytest.mark.parametrize("granularity", ["iteration", "layer", "expert"])
@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])  # qwen2_moe: a shared expert
def test_the_executor_on_an_onednn_model_matches_generate_under_preemption(family, granularity):
    model = family_model(family, "onednn", num_layers=2)
    executor = RealExecutor(model, granularity)
    sequences = make_sequences(executor, random_prompts(128, [9, 4, 6, 3, 7], seed=6), [5, 4, 6, 3, 4])
    background, urgent = sequences[:3], sequences[3:]
    step(executor, background)  # prefill
    if granularity != "iteration":  # a decode pass set aside at its second checkpoint (none between iterations)
        preempted = executor.forward(background)
        checkpoints = [next(preempted), next(preempted)]
        assert checkpoints[1].layer == (0 if granularity == "expert" else 1)
        if granularity == "expert":
            assert checkpoints[0].expert == ATTENTION and checkpoints[1].expert >= 0  # after an expert group
    while unfinished(urgent):
        step(executor, unfinished(urgent))
    if granularity != "iteration":
        append(background, run_to_completion(preempted))
    while unfinished(background):
        step(executor, unfinished(background))
    assert_matches_oracle(model, sequences)


# The oracle cases: prompts of several lengths, each generated alone, as tests/test_executor.py's oracle does.
ORACLE_PROMPTS = random_prompts(128, [9, 4, 6, 3, 7, 12, 5, 8], seed=6)


@pytest.mark.parametrize("family", FAMILIES)  # every family oneDNN serves (the stock numbers' test above)
def test_onednn_and_the_stock_kernels_generate_the_same_greedy_tokens(family):
    stock, fast = family_model(family, "grouped_mm", num_layers=2), family_model(family, "onednn", num_layers=2)
    assert fast.config._experts_implementation == "onednn"  # the same weights (same seed), other kernels
    compared = 0
    for prompt in ORACLE_PROMPTS:
        expected, margin = oracle(stock, tuple(prompt), 8)
        if margin <= MIN_MARGIN:  # a near tie: rounding may rightly pick either token
            continue
        assert oracle(fast, tuple(prompt), 8)[0] == expected, f"{family}: prompt {prompt}"
        compared += 1
    assert compared >= 5, f"only {compared} cases without a near tie"


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: mixtral(dtype="float16"), "dtype is torch.float16"),
        (lambda: mixtral(cpu_kernels="mkl"), "expected null or one of"),
        (lambda: load_model(model_type="gpt_oss", config=dict(vocab_size=64, hidden_size=64, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            num_local_experts=4, layer_types=["full_attention"]),
                            attn_implementation="eager", cpu_kernels="onednn"),
         "GptOssExperts: experts with biases"),
    ],
    ids=["float16", "unknown kernels", "biased experts"],
)  # fmt: skip
def test_a_model_the_kernels_cannot_serve_is_refused_with_the_reason(build, reason):
    with pytest.raises(ConfigurationError, match=reason):
        build()


def test_a_torch_without_onednn_is_refused_before_the_model_changes(monkeypatch):
    model = mixtral(cpu_kernels=None)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with pytest.raises(ConfigurationError, match="built without oneDNN"):
        apply_cpu_kernels(model, "onednn")
    assert type(model.lm_head) is nn.Linear and model.config._experts_implementation != "onednn"


def test_choosing_the_onednn_experts_implementation_alone_says_what_is_missing():
    model = mixtral(cpu_kernels=None)
    model.set_experts_implementation("onednn")
    with pytest.raises(RuntimeError, match="cpu_kernels='onednn'"), torch.no_grad():
        model.model.layers[0].mlp(torch.randn(1, 2, CONFIG["hidden_size"]))
