"""The profiled cost model: stage times measured on this machine, fitted over the features that drive them.

`qllm-profile` (harness/profiling/profile_app.py) runs the real executor over pass shapes drawn at random
(batch sizes, prompt and context lengths, padded and unpadded batches) and writes every measured
sample to a profile table (Parquet), one row per sample:

| column | meaning |
|---|---|
| stage | one of STAGES (what `StageCosts` names), `expert`, `idle`, `wake`, `after_prompts` or `in_run_<granularity>` |
| phase | `prefill` or `decode` (one new token per row after a cached context) |
| batch_size | sequences in the pass |
| query_len | new tokens per row, padded to the longest |
| key_len | cached plus new tokens, padded to the longest |
| real_tokens | new tokens, padding left out |
| tokens | `expert` rows: tokens the expert received; `after_prompts` and `in_run_*` rows: the prompt tokens fed (else 0) |
| idle_s | `idle` and `wake` rows: seconds the engine had been idle when the request arrived (else 0) |
| step_after | `after_prompts` and `in_run_*` rows: which decode step after the prompts, from 1 (else 0; absent before these rows) |
| seconds | the sample |

The table's metadata names the model it was measured on (its `ModelShape`) and the machine (`about`: CPU
model, cores, torch threads, versions). A run on another model is refused, and so is a run on another
CPU model unless `allow_foreign_profile` (a profile's times hold on the CPU that measured them). Each
stage's time is a non-negative linear model of the pass's features (FEATURES: a constant, rows, padded
and real tokens, the attention's query x key area, the keys gathered, the longest row's keys (work per
block of a block table), the routed experts expected to run; a stage that holds no attention reads no
keys, and is fitted on the others, STAGE_FEATURES), fitted per phase by least squares on the relative
error, so it predicts shapes between and beyond the measured ones from what drives the cost rather than
by interpolating a grid. The pass's end is the exception in one feature: its cost steps with the rows
(the LM head's GEMM changes kernels with its row count), so its constant and rows give way to a
piecewise-linear function of the rows (`row_basis`). A routed expert's time is piecewise linear in the
tokens it received, for the same reason (its GEMMs change kernels with their rows). A stage that holds
an attention may cost more per unit of area as the area grows (eager attention's scores outgrow the
caches): its fit adds convex hinges in the area. A pass after the engine has been idle ends later than
the same pass straight after another, by a delay that grows with the time idle (`idle_s`: the median
measured delay at each gap the profile probed, interpolated in the log of the gap), and it looks at its
queue later too: a request is put into a batch some time after it arrives (`wake` rows; the replay's
sleep overshoots, the first request submitted after idle runs cold), and requests arriving meanwhile
join that batch (`wake_s`). Likewise the decode steps after a pass that fed prompts run slower until the
decode's weights are back in the CPU's caches: the k-th decode pass after it ends later by a share of
its own time that grows with the prompt tokens and shrinks with k (`after_prompts_s`: the median
measured share at each prompt size probed and each k; a profile measured before these probes prices
none). Last, the passes of real engine runs at each granularity, timed in the runs
(`in_run_<granularity>` rows, `in_run_passes`; none with `in_run_run.batch_sizes=[]`): they take more or
less than the stages timed alone add up to, and with `in_run_level` the simulator scales the model's
work to them (qllm.sim.level; off by default: on the fidelity suite's seeds 63-67 it ran slow of the
real runs, docs/reproducing.md; a profile without them is refused for it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.optimize import nnls

from qllm.errors import ConfigurationError
from qllm.machine import cpu_name
from qllm.sim.cost_model import InRunPass, PassShape, StageCosts
from qllm.sim.plan import WholeLayerPlan
from qllm.sim.routing import expected_experts
from qllm.sim.shape import ModelShape

STAGES = ("pass_start", "whole_pass_start", "attention", "router", "combine", "dense_mlp", "layer", "pass_end",
          "checkpoint", "pass_overhead")  # fmt: skip
PHASES = ("prefill", "decode")
COLUMNS = ("stage", "phase", "batch_size", "query_len", "key_len", "real_tokens", "tokens", "idle_s", "step_after",
           "seconds")  # fmt: skip
ADDED_COLUMNS = ("step_after",)  # 0 in a profile written before them
FEATURES = ("constant", "rows", "padded_tokens", "real_tokens", "attention_area", "keys", "longest", "experts_run")
# Only the attention reads the cached keys; a stage without one is fitted on the features of what it does
# read. The engine's own work between quanta scales with the sequences and tokens it handles (its run
# records no keys). The router, the experts' combine, a dense MLP and the pass's end (final norm, LM head,
# next tokens) scale with the tokens. Given the keys too, such a stage took whatever slope the noise of
# its few samples drew, and non-negative coefficients keep a slope drawn upwards and clip one drawn
# downwards: a tiny_mixtral profile (Xeon VM) priced a 1-row decode pass's end +0.30 us a key and its
# routers +0.06 us, 0.25 ms of a 3.5 ms pass at 700 keys, where the passes of one sequence decoding
# alone took the same at 100 keys and at 700.
ENGINE_FEATURES = ("constant", "rows", "real_tokens")
TOKEN_FEATURES = ("constant", "rows", "padded_tokens", "real_tokens", "experts_run")
STAGE_FEATURES = {"checkpoint": ENGINE_FEATURES, "pass_overhead": ENGINE_FEATURES, "router": TOKEN_FEATURES,
                  "combine": TOKEN_FEATURES, "dense_mlp": TOKEN_FEATURES, "pass_end": TOKEN_FEATURES}  # fmt: skip
STAGE_COLUMNS = {stage: np.isin(FEATURES, names) for stage, names in STAGE_FEATURES.items()}  # masks, built once
# The end of a pass (final norm, LM head, next tokens) does not grow linearly with its rows: the LM head's
# GEMM changes kernels with its row count (tiny_mixtral on the EPYC: 3 rows 0.86 ms, 4 rows 1.47 ms, 8
# rows 1.87 ms). A line through such steps priced a 1-row prefill's end 1.3-1.5x and a 4-8-row one
# 0.73x; so its constant and rows feature give way to a piecewise-linear function of the rows, with
# knots at those of these row counts the profile measured in the pass's phase (a knot without samples
# of its own would be priced at nothing, and a phase's prices past its measured rows with it).
ROW_KNOTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# A routed expert's time steps with its tokens as the LM head's with its rows (small_mixtral on the EPYC:
# 1 token 0.44 ms, 2 tokens 0.49 ms, 3-6 tokens 0.43-0.45 ms; a line through them priced 3-6 tokens
# 1.10-1.15x, where a decode step's experts mostly are), so it is piecewise linear too, with knots at
# those of these token counts that some sample reaches without reaching the next one.
TOKEN_KNOTS = tuple(sorted({2**k for k in range(15)} | {3 * 2**k for k in range(14)}))
ROWS_STEP = "pass_end"
IN_RUN = "in_run_"  # + granularity: a stage of passes timed in engine runs
ROW_FEATURES = np.isin(FEATURES, ("constant", "rows"))  # what ROWS_STEP's function of the rows stands in for
# Attention that materializes its query x key scores (eager: gpt-oss's sinks, flint) costs more per unit of
# area once the scores outgrow the caches (tiny_gpt_oss on the EPYC: one 400-token prompt 10 ms, five
# 82 ms, not 50; a line priced its prefills +22-27 %). The cost of the stages that hold an attention may
# bend upwards in the area: hinges max(0, area - knot) at these quantiles of the areas the profile
# sampled, with non-negative weights (zero where the cost is linear, as a fused kernel's is).
AREA_STAGES, AREA_QUANTILES = ("attention", "layer"), tuple(np.linspace(0.1, 0.9, 9))
MODEL_KEY = b"qllm.model_shape"  # Parquet metadata: the ModelShape the profile was measured on
ABOUT_KEY = b"qllm.about"  # Parquet metadata: how and where it was measured
OUTLIER = 3.0  # see `fit`
PROFILE_COMMAND = "qllm-profile model=<the run's model> out=<path>"


def write_profile(table: pd.DataFrame, path: Path, model: ModelShape | dict, about: dict) -> None:
    """`model`: the shape measured on, or its dict as `read_profile` gives it."""
    shape = model if isinstance(model, dict) else dataclasses.asdict(model)
    only = {column: table[column].fillna(0) if column in table else 0 for column in ("idle_s", "step_after")}  # some stages' own
    frame = table.assign(**only)[list(COLUMNS)].sort_values(["stage", "phase", "batch_size", "query_len", "key_len", "tokens"])
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(arrow.schema.metadata or {}), MODEL_KEY: json.dumps(shape).encode(),
                ABOUT_KEY: json.dumps(about).encode()}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow.replace_schema_metadata(metadata), path)


def read_profile(path: Path) -> tuple[pd.DataFrame, dict, dict]:
    """The table, the model shape it was measured on (as a dict) and how it was measured."""
    arrow = pq.read_table(path)
    metadata = arrow.schema.metadata or {}
    if MODEL_KEY not in metadata or not set(COLUMNS) - set(ADDED_COLUMNS) <= set(arrow.column_names):
        raise ConfigurationError(f"{path}: not a profile written by this version of qllm-profile; "
                                 f"measure one with `{PROFILE_COMMAND}`")  # fmt: skip
    table = arrow.to_pandas()
    table = table.assign(**{column: 0 for column in ADDED_COLUMNS if column not in table})
    return table, json.loads(metadata[MODEL_KEY]), json.loads(metadata.get(ABOUT_KEY, b"{}"))


def merge_profiles(paths: list[Path], out: Path) -> None:
    """One profile of the samples of several (`qllm-profile part=i parts=n`, measured at different
    times) of one model on one CPU; its `about` is the first's, with every part's."""
    tables, models, abouts = zip(*(read_profile(path) for path in paths))
    for path, model, about in zip(paths[1:], models[1:], abouts[1:]):
        if model != models[0] or about.get("cpu") != abouts[0].get("cpu"):
            raise ConfigurationError(f"profiles {paths[0]} and {path} were measured on other models or CPUs: not merged")
    merged = pd.concat(tables, ignore_index=True)
    write_profile(merged, out, models[0], {**abouts[0], "parts": list(abouts)})


def features(model: ModelShape, batch_size, query_len, key_len, real_tokens) -> np.ndarray:
    """[..., FEATURES] for passes of these shapes (arrays broadcast)."""
    batch_size, query_len, key_len, real_tokens = (np.asarray(x, dtype=float) for x in
                                                   (batch_size, query_len, key_len, real_tokens))  # fmt: skip
    experts_run = expected_experts(model.num_experts, model.top_k, real_tokens)
    columns = (np.ones_like(batch_size), batch_size, batch_size * query_len, real_tokens,
               batch_size * query_len * key_len, batch_size * key_len, key_len, experts_run)  # fmt: skip
    return np.stack(np.broadcast_arrays(*columns), axis=-1)


def row_basis(knots: np.ndarray, batch_size) -> np.ndarray:
    """[..., knots] piecewise-linear functions of the rows, each 1 at its knot and 0 at the others, so
    that a combination is the line through its coefficients at the knots; past the last knot the last
    segment goes on straight, below the first the first knot's value holds (one knot: proportional to
    the rows)."""
    rows = np.asarray(batch_size, dtype=float)
    if len(knots) == 1:
        return (rows / knots[0])[..., None]
    basis = np.stack([np.interp(rows, knots, np.eye(len(knots))[j]) for j in range(len(knots))], axis=-1)
    past, t = rows > knots[-1], (rows - knots[-2]) / (knots[-1] - knots[-2])
    basis[..., -1], basis[..., -2] = np.where(past, t, basis[..., -1]), np.where(past, 1 - t, basis[..., -2])
    return basis


def fit(x: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative coefficients of x @ coefficients ~ `seconds`. The shape of the cost (how it grows
    with each feature) is a least-squares fit with each residual over the square root of its sample,
    so small passes count (a plain fit would serve the large ones only), on the samples within
    OUTLIER times a first fit's prediction: a spike (the core taken by something else for a moment)
    is the machine, not the pass. Its level is then set so that the predicted sum over those samples
    equals their measured sum: a run's time is such a sum, and a fit of ratios alone falls short of
    it where the noise is a share of the time."""
    coefficients = _weighted_nnls(x, seconds)
    kept = (seconds <= OUTLIER * (x @ coefficients)) | (x @ coefficients <= 0)
    if kept.sum() <= x.shape[1]:
        return coefficients
    coefficients = _weighted_nnls(x[kept], seconds[kept])
    total, predicted = seconds[kept].sum(), (x[kept] @ coefficients).sum()
    return coefficients * (total / predicted) if total > 0 and predicted > 0 else coefficients


def fit_expert(tokens: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A routed expert's time as a piecewise-linear function of the tokens it received: its knots
    (TOKEN_KNOTS) and its seconds at each (`piecewise` prices it)."""
    bins = np.searchsorted(TOKEN_KNOTS, tokens, side="right") - 1  # the knot at or below each sample
    knots = np.array(TOKEN_KNOTS, dtype=float)[np.unique(bins[bins >= 0])]
    return knots, fit(row_basis(knots, tokens), seconds)


def piecewise(knots: np.ndarray, values: np.ndarray, x) -> np.ndarray:
    """The line through (knots, values), going on straight past the last knot and flat below the first."""
    return row_basis(knots, x) @ values


def _weighted_nnls(x: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    # Samples at or below zero (a stage found by subtracting two noisy quanta) weigh as the median one.
    typical = np.median(seconds[seconds > 0]) if (seconds > 0).any() else 1.0
    weight = 1 / np.sqrt(np.where(seconds > 0, np.maximum(seconds, typical * 1e-2), typical))
    norms = np.maximum(np.abs(x * weight[:, None]).max(axis=0), 1e-30)  # columns of comparable size for the solver
    coefficients, _ = nnls(x * weight[:, None] / norms, seconds * weight)
    return coefficients / norms


class ProfiledCostModel:
    def __init__(self, path: str, model: ModelShape, allow_foreign_profile: bool = False,
                 wake_up_delay: bool = True, after_prompts_delay: bool = True, in_run_level: bool = False) -> None:  # fmt: skip
        table, measured_on, self.about = read_profile(resolve(path))
        this_model = json.loads(json.dumps(dataclasses.asdict(model)))  # as the table's metadata holds it
        differ = sorted(k for k, v in this_model.items() if k in measured_on and measured_on[k] != v)
        if differ:  # a field ModelShape gained after the profile was written is no difference
            raise ConfigurationError(
                f"profile {path} was measured on another model ({', '.join(differ)} differ); "
                f"measure this one with `{PROFILE_COMMAND}` and point hardware.path at its table"
            )
        measured_cpu, this_cpu = self.about.get("cpu"), cpu_name()
        if measured_cpu != this_cpu and not allow_foreign_profile:
            raise ConfigurationError(
                f"profile {path} was measured on another CPU ({measured_cpu!r}; this one is {this_cpu!r}): measure "
                f"one here with `{PROFILE_COMMAND}`, or set hardware.allow_foreign_profile=true to use it anyway"
            )  # fmt: skip
        self.model, self.wake_up_delay, self.after_prompts_delay = model, wake_up_delay, after_prompts_delay
        self.knots = {}  # phase -> ROWS_STEP's row knots
        self.area_knots = {}  # (stage, phase) -> the AREA_STAGES' hinges' areas
        self.coefficients = {}  # (stage, phase) -> coefficients of `design(stage, phase, ...)`'s columns
        in_run = table["stage"].str.startswith(IN_RUN)
        for (stage, phase), rows in table[~in_run & ~table["stage"].isin(["expert", "idle", "wake", "after_prompts"])].groupby(["stage", "phase"]):
            if stage == ROWS_STEP:
                measured = set(rows["batch_size"])
                self.knots[phase] = np.array([k for k in ROW_KNOTS if k in measured] or [rows["batch_size"].max()], dtype=float)
            x = features(model, rows["batch_size"], rows["query_len"], rows["key_len"], rows["real_tokens"])
            if stage in AREA_STAGES:
                self.area_knots[stage, phase] = np.unique(np.quantile(x[:, FEATURES.index("attention_area")], AREA_QUANTILES))
            self.coefficients[stage, phase] = fit(self.design(stage, phase, x, rows["batch_size"]), rows["seconds"].to_numpy(float))
        needed = [s for s in STAGES if s != "dense_mlp" or not all(model.sparse_layers)]
        missing = sorted({f"{stage}/{phase}" for stage in needed for phase in PHASES} - {"/".join(k) for k in self.coefficients})
        experts, idle = table[table["stage"] == "expert"], table[table["stage"] == "idle"]
        missing += [stage for stage, rows in (("expert", experts), ("idle", idle)) if rows.empty]
        if missing:
            raise ConfigurationError(f"profile {path} lacks stages {missing}: measure it again with qllm-profile")
        self.expert_knots, self.expert_seconds = fit_expert(experts["tokens"].to_numpy(float), experts["seconds"].to_numpy(float))
        delays = idle.groupby("idle_s")["seconds"].median()  # by gap; below 0 is noise around no delay
        self.idle_gaps, self.idle_delays = delays.index.to_numpy(float), np.maximum(delays.to_numpy(float), 0.0)
        batched = table[table["stage"] == "wake"].groupby("idle_s")["seconds"].median()  # by gap; 0: straight after work
        self.wake_busy_s = float(batched.get(0.0, 0.0))  # none in a profile measured before these rows
        after_idle = batched[batched.index > 0]
        self.wake_gaps = after_idle.index.to_numpy(float) if len(after_idle) else np.ones(1)
        self.wake_extra_s = np.maximum(after_idle.to_numpy(float) - self.wake_busy_s, 0.0) if len(after_idle) else np.zeros(1)
        self.prompt_tokens, self.after_prompts_shares = self._after_prompts_shares(table[table["stage"] == "after_prompts"])
        if in_run_level and not in_run.any():
            raise ConfigurationError(
                f"profile {path} holds no passes of engine runs for hardware.in_run_level: measure one with "
                f"`{PROFILE_COMMAND} 'in_run_run.batch_sizes=[32,16,8,4,2,1]'`, or leave the level off"
            )  # fmt: skip
        self.in_run = table[in_run] if in_run_level else table.iloc[:0]

    def _after_prompts_shares(self, probes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The prompt sizes probed, and [sizes, steps after] the median of the probes' delays over
        their decode step's price (a share: the refill grows with what the step reads). A cache refill
        only ever goes on: a step's share is at most the one before's (noise is not a new delay)."""
        if probes.empty:
            return np.ones(1), np.zeros((1, 1))
        shape = ["batch_size", "key_len", "real_tokens"]  # a probe's steps share its decode batch's: priced once
        steps_s = probes[shape].drop_duplicates().assign(
            step_s=lambda batches: [self.decode_pass_s(PassShape(int(b), 1, int(k), int(r))) for b, k, r in batches.to_numpy()])
        step_s = probes.merge(steps_s, on=shape, how="left")["step_s"].to_numpy()
        shares = (probes["seconds"] / step_s).groupby([probes["tokens"], probes["step_after"]]).median()
        by_step = shares.unstack("step_after").fillna(0.0)  # [prompt sizes, steps after]
        return by_step.index.to_numpy(float), np.minimum.accumulate(np.maximum(by_step.to_numpy(float), 0.0), axis=1)

    def decode_pass_s(self, shape: PassShape) -> float:
        """A pass of `shape` calling every layer whole, as the probes time it: no engine work around it."""
        costs = self.stage_costs(shape)
        return WholeLayerPlan.of(self.model, costs, "iteration").total_s - costs.pass_overhead_s

    def design(self, stage: str, phase: str, x: np.ndarray, batch_size) -> np.ndarray:
        """A stage's columns, from the FEATURES `x` of its passes: those of what it reads (STAGE_FEATURES;
        the others, which build or run an attention, all); the pass's end takes a function of the rows
        (`row_basis`) for the constant and rows; a stage that holds an attention adds hinges in its area
        (AREA_STAGES)."""
        if stage == ROWS_STEP:
            rest = x[..., STAGE_COLUMNS[stage] & ~ROW_FEATURES]
            return np.concatenate([row_basis(self.knots[phase], batch_size), rest], axis=-1)
        if stage in AREA_STAGES:
            area = x[..., FEATURES.index("attention_area"), None]
            return np.concatenate([x, np.maximum(area - self.area_knots[stage, phase], 0.0)], axis=-1)
        return x[..., STAGE_COLUMNS[stage]] if stage in STAGE_COLUMNS else x

    def stage_costs(self, shape: PassShape) -> StageCosts:
        phase = "decode" if shape.is_decode else "prefill"
        x = features(self.model, shape.batch_size, shape.query_len, shape.key_len, shape.num_real_tokens)
        seconds = {stage: float(self.design(stage, phase, x, shape.batch_size) @ c)
                   for (stage, stage_phase), c in self.coefficients.items() if stage_phase == phase}  # fmt: skip
        return StageCosts(
            pass_start_s=seconds["pass_start"],
            attention_s=seconds["attention"],
            router_s=seconds["router"],
            combine_s=seconds["combine"],  # a shared expert is measured with its block's output
            shared_expert_s=0.0,
            dense_mlp_s=seconds.get("dense_mlp", 0.0),
            layer_s=seconds["layer"],
            pass_end_s=seconds["pass_end"],
            checkpoint_s=seconds["checkpoint"],
            pass_overhead_s=seconds["pass_overhead"],
            whole_pass_start_s=seconds["whole_pass_start"],
        )

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        return np.where(tokens > 0, piecewise(self.expert_knots, self.expert_seconds, tokens), 0.0)

    def idle_s(self, gap_s: float) -> float:
        """The measured delays interpolated in the log of the gap; below the shortest gap probed, in
        proportion to it (none after no idle time); past the longest, the longest's. None at all
        without `wake_up_delay` (to see what the delay is worth: benchmarks/wake_up.py)."""
        if not self.wake_up_delay:
            return 0.0
        return log_interpolated(gap_s, self.idle_gaps, self.idle_delays)

    def wake_s(self, gap_s: float) -> float:
        """The median time from a request's arrival to its batch straight after work (gap 0), plus what
        idling `gap_s` added to it (interpolated as `idle_s`); none without `wake_up_delay`."""
        if not self.wake_up_delay:
            return 0.0
        return self.wake_busy_s + log_interpolated(gap_s, self.wake_gaps, self.wake_extra_s)  # nothing added at gap 0

    def after_prompts_s(self, prompt_tokens: int, step_after: int, decode_s: float) -> float:
        """The shares measured at the `step_after`-th step interpolated in the log of the prompt tokens
        (in proportion to them below the fewest probed, the most's past them), of `decode_s`; none past
        the steps probed, nor without `after_prompts_delay`."""
        if not self.after_prompts_delay or not 1 <= step_after <= self.after_prompts_shares.shape[1]:
            return 0.0
        return decode_s * log_interpolated(prompt_tokens, self.prompt_tokens, self.after_prompts_shares[:, step_after - 1])


    def in_run_passes(self, granularity: str) -> list[InRunPass]:
        """The profile's passes of engine runs at `granularity` (`in_run_<granularity>` rows)."""
        rows = self.in_run[self.in_run["stage"] == IN_RUN + granularity]
        return [InRunPass(PassShape(int(b), int(q), int(k), int(r)), int(n), int(step), float(s))
                for b, q, k, r, n, step, s in rows[["batch_size", "query_len", "key_len", "real_tokens", "tokens",
                                                    "step_after", "seconds"]].to_numpy()]  # fmt: skip


def log_interpolated(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """ys at x, interpolated in log(x); below xs[0] in proportion to x (nothing at 0), past xs[-1] ys[-1]."""
    if x < xs[0]:
        return float(ys[0] * max(x, 0.0) / xs[0])
    return float(np.interp(np.log(x), np.log(xs), ys))


def resolve(path: str) -> Path:
    """A profile path as given, else relative to the project (the committed profiles/)."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() or candidate.exists() else Path(__file__).resolve().parents[2] / path
