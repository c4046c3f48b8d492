"""The profiled cost model: stage times measured on this machine, interpolated between shapes.

`qllm-profile` (harness/profile_app.py) runs the real executor over a grid of pass shapes and
writes a profile table (Parquet), one row per measured point:

| column | meaning |
|---|---|
| stage | one of STAGES (what `StageCosts` names), or `expert` |
| phase | `prefill` (`length` = prompt tokens per sequence, padded) or `decode` (`length` = keys per sequence) |
| batch_size | sequences in the pass |
| length | see `phase` |
| tokens | `expert` rows: tokens the expert received (else 0) |
| seconds | the median of the measured samples |
| samples | how many samples the median is over |

The table's metadata names the model it was measured on (its `ModelShape`), and a run on another
model is refused. Between grid points a stage's time is interpolated linearly in batch size and
length, and extrapolated linearly beyond them; an expert's time is interpolated in its tokens.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.interpolate import RegularGridInterpolator

from qllm.errors import ConfigurationError
from qllm.sim.cost_model import PassShape, StageCosts
from qllm.sim.shape import ModelShape

# Stages measured on the (batch_size, length) grid of each phase; `layer` is a layer called whole.
STAGES = ("pass_start", "attention", "router", "combine", "dense_mlp", "layer", "pass_end", "checkpoint",
          "pass_overhead")  # fmt: skip
PHASES = ("prefill", "decode")
COLUMNS = ("stage", "phase", "batch_size", "length", "tokens", "seconds", "samples")
MODEL_KEY = b"qllm.model_shape"  # Parquet metadata: the ModelShape the profile was measured on
ABOUT_KEY = b"qllm.about"  # Parquet metadata: how and where it was measured


def write_profile(table: pd.DataFrame, path: Path, model: ModelShape, about: dict) -> None:
    frame = table[list(COLUMNS)].sort_values(["stage", "phase", "batch_size", "length", "tokens"])
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(arrow.schema.metadata or {}), MODEL_KEY: json.dumps(dataclasses.asdict(model)).encode(),
                ABOUT_KEY: json.dumps(about).encode()}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow.replace_schema_metadata(metadata), path)


def read_profile(path: Path) -> tuple[pd.DataFrame, dict, dict]:
    """The table, the model shape it was measured on (as a dict) and how it was measured."""
    arrow = pq.read_table(path)
    metadata = arrow.schema.metadata or {}
    if MODEL_KEY not in metadata:
        raise ConfigurationError(f"{path}: not a profile written by qllm-profile (no {MODEL_KEY.decode()} metadata)")
    return arrow.to_pandas(), json.loads(metadata[MODEL_KEY]), json.loads(metadata.get(ABOUT_KEY, b"{}"))


class ProfiledCostModel:
    def __init__(self, path: str, model: ModelShape) -> None:
        table, measured_on, self.about = read_profile(resolve(path))
        this_model = json.loads(json.dumps(dataclasses.asdict(model)))  # as the table's metadata holds it
        differ = sorted(k for k, v in this_model.items() if k in measured_on and measured_on[k] != v)
        if differ:  # a field ModelShape gained after the profile was written is no difference
            raise ConfigurationError(
                f"profile {path} was measured on another model ({', '.join(differ)} differ); "
                f"measure this one with `qllm-profile model=...` and point hardware.path at its table"
            )
        self.grids = {(stage, phase): grid_interpolator(rows) for (stage, phase), rows in
                      table[table["stage"] != "expert"].groupby(["stage", "phase"])}  # fmt: skip
        needed = [s for s in STAGES if s != "dense_mlp" or not all(model.sparse_layers)]
        missing = sorted({f"{stage}/{phase}" for stage in needed for phase in PHASES} - {"/".join(k) for k in self.grids})
        if missing or not (table["stage"] == "expert").any():
            raise ConfigurationError(f"profile {path} lacks stages {missing or ['expert']}: measure it again with qllm-profile")
        experts = table[table["stage"] == "expert"].groupby("tokens")["seconds"].median()
        self.expert_tokens, self.expert_seconds = experts.index.to_numpy(float), experts.to_numpy(float)

    def stage_costs(self, shape: PassShape) -> StageCosts:
        is_decode = shape.query_len == 1 and shape.key_len > 1
        phase, length = ("decode", shape.key_len) if is_decode else ("prefill", shape.query_len)
        point = np.array([shape.batch_size, length], dtype=float)
        seconds = {stage: max(float(grid(point)[0]), 0.0) for (stage, grid_phase), grid in self.grids.items()
                   if grid_phase == phase}  # fmt: skip
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
        )

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        seconds = interpolate(tokens.astype(float), self.expert_tokens, self.expert_seconds)
        return np.where(tokens > 0, np.maximum(seconds, 0.0), 0.0)


def resolve(path: str) -> Path:
    """A profile path as given, else relative to the project (the committed profiles/)."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() or candidate.exists() else Path(__file__).resolve().parents[2] / path


def grid_interpolator(rows: pd.DataFrame) -> RegularGridInterpolator:
    """Linear in (batch_size, length) over the measured grid, extrapolated linearly beyond it."""
    values = rows.pivot_table(index="batch_size", columns="length", values="seconds", aggfunc="median")
    if values.isna().any().any():
        raise ConfigurationError(f"profile stage {rows['stage'].iloc[0]!r}: the grid has holes (every batch size x length needed)")
    axes = (values.index.to_numpy(float), values.columns.to_numpy(float))
    if min(len(axis) for axis in axes) < 2:  # one point on an axis: constant along it
        axes = tuple(axis if len(axis) > 1 else np.array([axis[0], axis[0] + 1.0]) for axis in axes)
        values = np.broadcast_to(values.to_numpy(), tuple(len(axis) for axis in axes))
    return RegularGridInterpolator(axes, np.asarray(values), bounds_error=False, fill_value=None)


def interpolate(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise linear through (xp, fp), extended linearly past both ends."""
    if len(xp) == 1:
        return np.full_like(x, fp[0])
    inside = np.interp(x, xp, fp)
    low = fp[0] + (x - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    high = fp[-1] + (x - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return np.where(x < xp[0], low, np.where(x > xp[-1], high, inside))
