"""`qllm-plan`: a model's memory without its weights (conf/plan.yaml; qllm/memory_plan.py).

    qllm-plan model=mixtral_8x7b_4bit                  # the paper's setting on an 80 GiB GPU
    qllm-plan model=mixtral_8x7b_4bit gpu_memory_gib=40
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from harness.traces.workload import PROJECT_ROOT
from qllm.memory_plan import meta_model, plan


def memory_plan_lines(cfg: DictConfig) -> list[str]:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = meta_model(model_cfg)
    quantization = model_cfg.get("quantization") or "none"
    header = f"model: {model.config.model_type}, {model_cfg.get('dtype')}, quantization {quantization}"
    return [header, *plan(model, cfg.gpu_memory_gib).lines()]


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="plan")
def main(cfg: DictConfig) -> None:
    print("\n".join(memory_plan_lines(cfg)))


if __name__ == "__main__":
    main()
