"""The simulator's price of each pass a real run made, against the pass's own time in that run.

benchmarks/sim_fidelity.py compares a run's metrics, where a pass priced a few percent off can move a
queue's latencies by tens; benchmarks/pass_fidelity.py prices passes timed alone. This one takes one
workload of the fidelity suite (`--seed`, `--workload`: the same draw), runs it on the real executor at
iteration granularity (one quantum per pass), rebuilds each pass's shape from the run's own tables
(which requests it held, their prompts and the tokens each had generated) and prices it as the
simulator would, the delays after prompts included (`CostModel.after_prompts_s`). It reports the
summed simulated / real time per phase, and per decode step after the last prompts (the first steps
pay the prompts' work; the later ones show the steady level); with `--isolated N`, N of the run's
decode passes timed again alone as `qllm-profile` times them (after its warm steps), to tell a
profile's level from what a run does that a pass alone does not. It also counts the experts each MoE
block call of the run routed tokens to, against what the simulator's routing draws (every token's
experts uniform and independent, qllm.sim.routing): a workload whose prompts are real text (ShareGPT's
`prompt_ids`) can route the rows of a decode pass to fewer experts than random token ids do, and
such passes run faster than the profile's (`--random-prompts`: the same workload with random ids;
docs/reproducing.md, "Routing on real text").

    taskset -c 1 python benchmarks/passes_in_run.py --seed 39 --workload 1              # profiles first
    taskset -c 1 python benchmarks/passes_in_run.py --seed 38 --workload 11 --models tiny_gpt_oss tiny_flint \\
        --profile profiles/tiny_gpt_oss.parquet --isolated 150
    taskset -c 1 python benchmarks/passes_in_run.py --seed 49 --workload 9 --random-prompts  # ShareGPT's text dropped
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_fidelity  # noqa: E402  (a workload drawn and loaded as the suite draws it)

from harness.app import compose_config, run_engine  # noqa: E402
from harness.engines import RunResources  # noqa: E402
from harness.profiling.profile_app import profile_in_process  # noqa: E402
from harness.profiling.profiler import batch_for, pass_groups, timed_quanta_of  # noqa: E402
from harness.replay import requests_from_trace  # noqa: E402
from harness.traces.random_workloads import ENGINES, MODELS, Limits, draw_trace, draw_workloads, requests_for, with_rate  # noqa: E402
from harness.traces.trace_schema import validate_trace  # noqa: E402
from qllm.modeling.adapters import adapter_for  # noqa: E402
from qllm.real.executor import RealExecutor  # noqa: E402
from qllm.sim.catch_up import SimRows, row_group_costs  # noqa: E402
from qllm.sim.executor import SimExecutor  # noqa: E402
from qllm.sim.profiled import ProfiledCostModel  # noqa: E402
from qllm.sim.routing import expected_experts  # noqa: E402

STEP_BINS = [0, 1, 2, 4, 8, 16, 64, 10**9]  # decode steps after the last prompts
TOKEN_BINS = [0, 16, 32, 64, 128, 256, 512, 1024, 10**9]  # prompt tokens a pass fed


def priced(passes, timeline: pd.DataFrame, sim: SimExecutor) -> pd.DataFrame:
    """A row per pass: its phase, the decode step after the last prompts, the prompts it fed and their
    tokens, its real and simulated seconds (the engine's work between passes left out of both)."""
    rows = []
    for groups, real in zip(passes, timeline.itertuples()):
        sim_rows = [SimRows((), (), shape, 0) for shape, _ in groups]
        plan = sim.groups_plan(sim_rows)
        delay = sim.after_prompts_s(sim_rows, plan)  # counts the decode passes since the last prompts
        is_decode = all(shape.is_decode for shape, _ in groups)
        shapes = [shape for shape, _ in groups]  # the engine's work as the plan charged it: one group's, or the rows' together
        overhead = (sim.stage_costs(shapes[0]) if len(shapes) == 1 else row_group_costs(sim.stage_costs, shapes)).pass_overhead_s
        prompts = [shape for shape in shapes if not shape.is_decode]
        rows.append({"phase": "decode" if is_decode else "prompts", "step_after": sim.decode_passes_after if is_decode else 0,
                     "prompts": sum(shape.batch_size for shape in prompts),
                     "prompt_tokens": sum(shape.num_real_tokens for shape in prompts),
                     "real_s": real.duration_s, "sim_s": plan.total_s - overhead + delay, "delay_s": delay,
                     "groups": groups})  # fmt: skip
    return pd.DataFrame(rows)


@contextlib.contextmanager
def routed_experts(model):
    """While open, the list it gives gets (tokens, distinct experts) of every call of `model`'s routed
    experts (each MoE block called whole, as at iteration granularity)."""
    calls = []

    def count(module, args) -> None:  # args: (tokens, top_k_index, top_k_weights)
        calls.append((args[1].shape[0], int(torch.unique(args[1]).numel())))

    handles = [parts.moe.experts.register_forward_pre_hook(count) for parts in adapter_for(model).parts if parts.moe is not None]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def routing_table(calls: list[tuple[int, int]], num_experts: int, top_k: int) -> pd.DataFrame:
    """Per tokens of a call (up to 32: decode passes' rows), the calls, the mean distinct experts
    routed to, and what the uniform routing gives."""
    frame = pd.DataFrame(calls, columns=["tokens", "distinct"])
    by_tokens = frame[frame["tokens"] <= 32].groupby("tokens")["distinct"].agg(["size", "mean"])
    by_tokens.columns = ["calls", "distinct experts"]
    by_tokens["uniform routing"] = expected_experts(num_experts, top_k, by_tokens.index)
    return by_tokens


def isolated(model, table: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """`count` of the run's one-group decode passes timed again alone, as the profiler times them."""
    executor = RealExecutor(model, "iteration")
    generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    single = table[(table["phase"] == "decode") & (table["groups"].map(len) == 1)]
    chosen = single.iloc[np.sort(rng.choice(len(single), size=min(count, len(single)), replace=False))]
    alone = [sum(s for _, s, _ in timed_quanta_of(executor, batch_for(executor, "decode", groups[0][1], generator)))
             for groups in chosen["groups"]]  # fmt: skip
    return chosen.assign(alone_s=alone)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--seed", type=int, required=True, help="the fidelity suite's seed")
    parser.add_argument("--workload", type=int, required=True, help="which of its workloads (#i)")
    parser.add_argument("--workloads", type=int, default=12, help="workloads the suite drew (the draw depends on it)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of arrivals, as the suite's --duration")
    parser.add_argument("--profile", type=Path, help="the model's profile (default: measure one first)")
    parser.add_argument("--isolated", type=int, default=0, metavar="N", help="time N of the run's decode passes alone too")
    parser.add_argument("--random-prompts", action="store_true",
                        help="drop the trace's prompt_ids (ShareGPT's text): random ids, as the profile's runs feed")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    limits = Limits(duration_s=args.duration)
    workload = draw_workloads(args.seed, args.workloads, args.models, args.engines)[args.workload]
    with tempfile.TemporaryDirectory() as folder:
        profile = args.profile or Path(folder) / f"{workload.model}.parquet"
        if args.profile is None:
            profile_in_process(workload.model, profile, [])
        sim = ["executor=sim", "hardware=profiled", f"hardware.path={profile}"]
        workload = with_rate(workload, sim_fidelity.capacity_rps(workload, limits, sim))
        trace = draw_trace(workload, requests_for(workload.rate, limits), workload.rate, limits)
        if args.random_prompts:
            trace = trace.drop(columns=["prompt_ids"], errors="ignore")
        cfg = compose_config(*workload.overrides(), "executor=real", "progress=false",
                             f"engine.{workload.engine}.granularity=iteration")  # fmt: skip
        (name, engine_cfg), = cfg.engine.items()
        resources = RunResources(cfg)
        with routed_experts(resources.model) as calls:
            run = run_engine(name, engine_cfg, resources, requests_from_trace(validate_trace(trace, source=f"workload {workload.index}")),
                             cfg, {"run_id": str(workload.index)})  # fmt: skip
        timeline = run["timeline"].sort_values("t_start_s").reset_index(drop=True)
        prompt_lens = dict(zip(run["requests"]["request_id"], run["requests"]["prompt_len"]))
        costs = SimExecutor(resources.model.config, None, functools.partial(ProfiledCostModel, str(profile)), "iteration")
        table = priced(pass_groups(list(timeline["request_ids"]), prompt_lens), timeline, costs)
    print(f"{workload.describe()} rate={workload.rate:.2f}/s, at iteration granularity: {len(table)} passes")
    for phase, rows in table.groupby("phase"):
        real_s, sim_s, delay_s = rows["real_s"].sum(), rows["sim_s"].sum(), rows["delay_s"].sum()
        print(f"  {phase}: simulated / real {sim_s / real_s:.3f} (summed; {(sim_s - delay_s) / real_s:.3f} without the "
              f"delays after prompts, {delay_s:.3f} s), median per pass {np.median(rows['sim_s'] / rows['real_s']):.3f}")  # fmt: skip
    prompts = table[table["phase"] == "prompts"]
    by_tokens = prompts.groupby([np.where(prompts["prompts"] == 1, "alone", "several"),
                                 pd.cut(prompts["prompt_tokens"], TOKEN_BINS)], observed=True)  # fmt: skip
    print("passes that fed prompts, by the prompt tokens fed (one prompt alone, or several):")
    print(pd.DataFrame({"passes": by_tokens.size(), "simulated / real": by_tokens["sim_s"].sum() / by_tokens["real_s"].sum()})
          .round(3).to_string())  # fmt: skip
    decode = table[table["phase"] == "decode"]
    by_step = decode.groupby(pd.cut(decode["step_after"], STEP_BINS))
    print(pd.DataFrame({"passes": by_step.size(), "simulated / real": by_step["sim_s"].sum() / by_step["real_s"].sum(),
                        "without the delays": (by_step["sim_s"].sum() - by_step["delay_s"].sum()) / by_step["real_s"].sum()})
          .round(3).to_string())  # fmt: skip
    shape = costs.model
    routing = routing_table(calls, shape.num_experts, shape.top_k)
    table.attrs["routing"] = routing
    table.attrs["prompt_lens"] = prompt_lens  # by request, from the run's own table
    ids = "the trace's" if "prompt_ids" in trace else "random"
    print(f"experts routed to per MoE block call of up to 32 tokens ({ids} prompt ids):")
    print(routing.round(2).to_string())
    if args.isolated:
        alone = isolated(resources.model, table, args.isolated, args.seed)
        print(f"  {len(alone)} decode passes timed alone: alone / in the run {alone['alone_s'].sum() / alone['real_s'].sum():.3f}, "
              f"simulated / alone {(alone['sim_s'] - alone['delay_s']).sum() / alone['alone_s'].sum():.3f} (summed)")  # fmt: skip
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
