"""`qllm-profile`: measure the real executor over pass shapes drawn at random and write the profile table
the simulator's `profiled` cost model reads (conf/profile.yaml; harness/profiling/profiler.py)."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
import transformers
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from harness.engines import RunResources
from harness.profiling.profiler import (ShapeSpace, draw_shapes, measure_after_prompts, measure_engine, measure_idle,
                                        measure_in_run, measure_stages)  # fmt: skip
from harness.traces.workload import PROJECT_ROOT
from qllm.errors import ConfigurationError, report_user_errors, user_errors_reported
from qllm.machine import cpu_name
from qllm.request import DEFAULT_PRIORITY, Request
from qllm.sim.profiled import write_profile
from qllm.sim.shape import ModelShape


def engine_requests(cfg: DictConfig) -> list[Request]:
    """Every request at 0, prompt and output lengths cycling so that batch sizes vary as they finish."""
    return [
        Request(f"e{i}", 0.0, 8 + i % (cfg.max_prompt_len - 7), 1 + i % cfg.max_output_len, "BE", DEFAULT_PRIORITY["BE"])
        for i in range(cfg.num_requests)
    ]


def idle_probes(cfg: DictConfig, seed: int, part: int = 0, parts: int = 1) -> tuple[list[float], list[int]]:
    """Each gap `repeats` times, in an order drawn from `seed`, with prompt lengths drawn up to
    `max_prompt_len`; of those, the probes at `part`, `part + parts`, ... (a part measures its share)."""
    rng = np.random.default_rng(seed)
    gaps = rng.permutation(np.repeat(np.asarray(cfg.gaps_s, dtype=float), cfg.repeats))
    lengths = rng.integers(1, cfg.max_prompt_len + 1, len(gaps))
    return [float(g) for g in gaps[part::parts]], [int(n) for n in lengths[part::parts]]


def after_prompts_probes(cfg: DictConfig, space: ShapeSpace, seed: int, part: int = 0,
                         parts: int = 1) -> list[tuple[int, list[int]]]:  # fmt: skip
    """(prompt tokens, a decode batch's contexts) per probe: each of `cfg.tokens` (up to the space's
    prompt tokens per pass) `repeats` times, in an order drawn from `seed`, each beside a decode shape
    drawn from `space`; of those, the probes at `part`, `part + parts`, ... (a part measures its share)."""
    rng = np.random.default_rng([seed, 1])  # apart from the shapes' and the idle probes' draws
    tokens = [min(int(n), space.max_batch_tokens) for n in cfg.tokens]
    tokens = rng.permutation(np.repeat(np.unique(tokens), cfg.repeats))
    decodes = draw_shapes(dataclasses.replace(space, num_shapes=len(tokens), decode_share=1.0), rng)
    return [(int(n), lengths) for n, (_, lengths) in zip(tokens, decodes)][part::parts]


def in_run_requests(cfg: DictConfig, space: ShapeSpace, seed: int, part: int = 0,
                    parts: int = 1) -> list[tuple[int, list[Request]]]:  # fmt: skip
    """A run per batch limit B of `cfg.batch_sizes`: (B, min(`cfg.num_requests`, `cfg.requests_per_row`
    x B) requests, all arriving at 0, prompts of 1 to the space's longest and outputs of 1 to
    `cfg.max_output_len` tokens drawn from `seed`). A part runs every B with its share of the requests
    (those at `part`, `part + parts`, ...; B of them at least, so that its passes reach B rows): the
    passes of each B then span the parts' times, as each stage's fit spans them. A part that took
    whole runs instead timed each B at the speed of the minutes it was measured in (small_mixtral,
    seed 59, when the level was set per rows: the decode levels of 1 and 8 rows, measured in the last
    part, 1.11 and 1.05; of 4 and 32 rows, in the first, 0.99 and 0.90)."""
    rng = np.random.default_rng([seed, 2])  # apart from the shapes', the idle and the after-prompts probes' draws
    runs = []
    for run, b in enumerate(cfg.batch_sizes):
        count = max(min(cfg.num_requests, cfg.requests_per_row * b), parts * b)
        requests = [Request(f"r{run}.{i}", 0.0, int(rng.integers(1, space.max_prompt_len + 1)),
                            int(rng.integers(1, cfg.max_output_len + 1)), "BE", DEFAULT_PRIORITY["BE"])
                    for i in range(count)]  # fmt: skip
        runs.append((int(b), requests[part::parts]))
    return runs


def profile(cfg: DictConfig) -> pd.DataFrame:
    if not 0 <= cfg.part < cfg.parts:
        raise ConfigurationError(f"part={cfg.part} parts={cfg.parts}: parts are numbered 0 to parts - 1")
    torch.set_num_threads(cfg.torch_threads)
    resources = RunResources(cfg)
    space = ShapeSpace(**OmegaConf.to_container(cfg.shapes, resolve=True))
    name, engine_cfg = next(iter(cfg.engine.items()))

    def build(clock, events, granularity: str | None = None, **policy):
        chosen = engine_cfg if granularity is None else OmegaConf.merge(engine_cfg, {"granularity": granularity})
        return resources.build_engine(OmegaConf.merge(chosen, {"policy": policy}), name, clock, events)

    # Each engine run between slices of the stages' shapes, its level set against them (measure_stages)
    runs = [functools.partial(measure_in_run, build, [run], [granularity])
            for run in in_run_requests(cfg.in_run_run, space, cfg.seed, cfg.part, cfg.parts)
            for granularity in cfg.in_run_run.granularities]  # fmt: skip
    stages_and_runs = measure_stages(resources.model, space, cfg.seed, cfg.part, cfg.parts, between=runs)
    engine = measure_engine(build, engine_requests(cfg.engine_run))
    idle = measure_idle(build, *idle_probes(cfg.idle_run, cfg.seed, cfg.part, cfg.parts))
    probes = after_prompts_probes(cfg.after_prompts_run, space, cfg.seed, cfg.part, cfg.parts)
    after_prompts = measure_after_prompts(resources.model, probes, space.max_prompt_len, cfg.after_prompts_run.steps,
                                          torch.Generator().manual_seed(cfg.seed))  # fmt: skip
    about = {
        "command": " ".join(["qllm-profile", *sys.argv[1:]]),
        "model": HydraConfig.get().runtime.choices.get("model"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": cfg.torch_threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "shapes": OmegaConf.to_container(cfg.shapes, resolve=True),
        "part": f"{cfg.part} of {cfg.parts}",
    }
    table = pd.concat([stages_and_runs, engine, idle, after_prompts], ignore_index=True)
    out = Path(cfg.out) if Path(cfg.out).is_absolute() else PROJECT_ROOT / cfg.out
    write_profile(table, out, ModelShape.of(resources.model.config), about)
    print(f"{len(table)} rows -> {out}")
    return table


def profile_in_process(model: str, out: Path, overrides: list[str]) -> pd.DataFrame:
    """`qllm-profile model=<model> out=<out> <overrides>`, run in this process (for the benchmarks)."""
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("profile", overrides=[f"model={model}", f"out={out}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return profile(cfg)


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="profile")
def main(cfg: DictConfig) -> None:
    with user_errors_reported("qllm-profile"):
        profile(cfg)


def cli() -> None:
    """`qllm-profile`: a user's mistake ends in one line on stderr and exit status 2."""
    report_user_errors(main, "qllm-profile")


if __name__ == "__main__":
    cli()
