"""The pass shapes rebuilt from a run's tables (harness.profiling.profiler.pass_groups) are those the real
executor ran (decode rows and prompt rows, mixed batches too), and benchmarks/passes_in_run.py prices a
workload's passes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import passes_in_run
from harness.profiling.profiler import pass_groups
from harness.app import compose_config, run_engine
from harness.engines import RunResources
from qllm.real.executor import RealExecutor
from qllm.request import DEFAULT_PRIORITY, Request


def rows_of(groups) -> tuple[list[int], list[int]]:
    """(decode rows' cached tokens, prompt rows' lengths), each sorted."""
    decode = sorted(n for shape, lens in groups if shape.is_decode for n in lens)
    prompts = sorted(n for shape, lens in groups if not shape.is_decode for n in lens)
    return decode, prompts


@pytest.mark.parametrize("engine", ["qllm", "fcfs_rtc"])
def test_the_shapes_rebuilt_from_a_runs_tables_are_the_passes_it_ran(engine, monkeypatch):
    """Requests arriving while others decode: `qllm` runs their prompts beside the decode rows (mixed
    passes), `fcfs_rtc` cohort by cohort; every pass's rows, read from the run's timeline and requests
    tables, are the rows the real executor was given."""
    ran = []
    forward = RealExecutor.forward

    def spy(self, batch, *rest, **named):
        decode = sorted(s.num_cached_tokens for s in batch if s.num_cached_tokens)
        ran.append((decode, sorted(s.num_new_tokens for s in batch if not s.num_cached_tokens)))
        return forward(self, batch, *rest, **named)

    monkeypatch.setattr(RealExecutor, "forward", spy)
    cfg = compose_config(f"engine=[{engine}]", "executor=real", "progress=false", f"engine.{engine}.granularity=iteration")
    (name, engine_cfg), = cfg.engine.items()
    requests = [Request(f"r{i}", 0.004 * i, 3 + 5 * i, 4 + i % 3, "LS" if i % 3 == 0 else "BE", DEFAULT_PRIORITY["BE"])
                for i in range(6)]  # fmt: skip
    run = run_engine(name, engine_cfg, RunResources(cfg), requests, cfg, {"run_id": "0"})
    timeline = run["timeline"].sort_values("t_start_s").reset_index(drop=True)
    prompt_lens = dict(zip(run["requests"]["request_id"], run["requests"]["prompt_len"]))
    rebuilt = [rows_of(groups) for groups in pass_groups(list(timeline["request_ids"]), prompt_lens)]
    assert rebuilt == ran[len(ran) - len(timeline):]  # the engine's warm-up passes come first
    if engine == "qllm":
        assert any(decode and prompts for decode, prompts in rebuilt)  # mixed passes were rebuilt too


def test_it_prices_each_pass_of_a_workload_and_the_steps_after_prompts(tmp_path, capsys):
    from harness.profiling.profile_app import profile_in_process

    profile = tmp_path / "tiny.parquet"
    profile_in_process("tiny_mixtral", profile, ["shapes.num_shapes=12", "shapes.max_batch_size=4", "idle_run.repeats=1",
                                                 "after_prompts_run.repeats=1", "engine_run.num_requests=24", "in_run_run.batch_sizes=[4]",
                                                 "in_run_run.num_requests=6", "in_run_run.max_output_len=6"])  # fmt: skip
    table = passes_in_run.main(["--seed", "3", "--workload", "0", "--workloads", "2", "--models", "tiny_mixtral",
                                "--engines", "fcfs_rtc", "--duration", "0.3", "--profile", str(profile), "--isolated", "3"])  # fmt: skip
    assert set(table["phase"]) == {"prompts", "decode"} and (table["real_s"] > 0).all() and (table["sim_s"] > 0).all()
    first = table[table["phase"] == "decode"].groupby((table["phase"] == "prompts").cumsum()).head(1)
    assert (first["step_after"] == 1).all() and (table.loc[table["phase"] == "prompts", "delay_s"] == 0).all()
    assert np.isfinite(table["delay_s"]).all()
    fed, prompt_lens = table[table["phase"] == "prompts"], table.attrs["prompt_lens"]  # fcfs_rtc: every prompt fed once
    assert fed["prompts"].sum() == len(prompt_lens) and fed["prompt_tokens"].sum() == sum(prompt_lens.values())
    routing = table.attrs["routing"]
    assert routing["calls"].sum() > 0 and routing["distinct experts"].between(2, 8).all()  # top-2 of 8
    printed = capsys.readouterr().out
    assert "simulated / real" in printed and "decode passes timed alone" in printed and "experts routed to" in printed
    assert "by the prompt tokens fed" in printed


def test_it_counts_the_experts_each_moe_block_call_routed_to():
    """The hooks see every sparse layer's call, each with the experts the router's top-k picked (read
    from the model's own router logits), and are gone once the block closes."""
    import torch

    model = RunResources(compose_config("model=tiny_mixtral", "executor=real")).model
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), passes_in_run.routed_experts(model) as calls:
        out = model(ids, output_router_logits=True)
    k = model.config.num_experts_per_tok
    picked = [len(torch.unique(torch.topk(logits, k, dim=-1).indices)) for logits in out.router_logits]
    assert calls == [(10, n) for n in picked] and len(calls) == model.config.num_hidden_layers
    with torch.no_grad():
        model(ids)
    assert len(calls) == model.config.num_hidden_layers


def test_the_uniform_routings_expected_experts_are_what_the_simulator_draws():
    from qllm.sim.routing import UniformRouting, expected_experts

    routing = UniformRouting(8, 2, seed=0)
    for tokens in (1, 3, 8):
        drawn = (routing.tokens_per_expert(4000, tokens) > 0).sum(axis=1).mean()
        assert drawn == pytest.approx(expected_experts(8, 2, tokens), rel=0.01)
    assert expected_experts(8, 2, 1) == 2
