"""`qllm-plan`: a model's memory from the meta device, with its quantization applied (qllm/memory_plan.py)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from harness.app import CONF_DIR
from harness.plan_app import memory_plan_lines
from qllm.modeling.kernels.nf4_experts import nf4_bytes
from qllm.memory_plan import GIB, meta_model, plan
from tests.helpers import run_cli


def plan_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("plan", overrides=list(overrides))


def test_mixtral_8x7b_in_nf4_fits_the_papers_gpu_in_26_gib():
    done = run_cli("model=mixtral_8x7b_4bit", "gpu_memory_gib=80", module="harness.plan_app")
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("weights: ") and lines[-1].endswith(" GiB"), lines
    assert float(lines[-1].split()[1]) <= 26.0, lines
    routed = next(line for line in lines if line.startswith("routed experts"))
    expert_values = 32 * 8 * 3 * 4096 * 14336  # layers x experts x (gate, up, down) x hidden x intermediate
    assert abs(float(routed.split()[2]) - nf4_bytes(expert_values) / GIB) < 1e-3, routed
    kv_tokens = int(next(line for line in lines if line.startswith("KV tokens")).split()[-1])
    assert kv_tokens >= 32 * 4096  # a batch of 32 at Mixtral's 4k context, beside the weights


def test_the_meta_plan_counts_what_the_built_model_holds():
    overrides = ("model=tiny_qwen2_moe", "model.quantization=bnb4", "++model.config.num_experts=4")
    cfg = plan_config(*overrides)
    model_cfg = dict(cfg.model)
    on_meta = plan(meta_model(model_cfg), cfg.gpu_memory_gib)
    built = plan(instantiate(cfg.model), cfg.gpu_memory_gib)  # real NF4 tensors on the CPU
    assert on_meta.part_bytes == built.part_bytes
    assert all(on_meta.part_bytes[part] > 0 for part in ("attention", "routed experts", "shared experts"))
    assert memory_plan_lines(cfg)[-1] == f"weights: {built.weight_bytes / GIB:.1f} GiB"
