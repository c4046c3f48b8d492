"""`repeats=N`: replay each point over N trace seeds and summarize each metric as a mean with a
95 % interval, so a reader can tell a difference between engines from run-to-run noise.

Repeat r replays the trace drawn with `trace.seed + r` (a fresh draw of arrivals, classes and
sampled requests where the trace draws them; a trace replayed as recorded differs only by the
machine's own noise). Its rows keep a `repeat` column; the run's `summary` table is the
aggregate over repeats: each metric's mean, `<metric>_ci95_low` and `<metric>_ci95_high` (the
Student-t 95 % interval of that mean over the repeats that have a value), and `repeats` (how many
repeats the row pools). With N = 1 nothing changes: no column is added.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from omegaconf import DictConfig, open_dict

REPEAT = "repeat"
REPEATS = "repeats"
PER_REPEAT_TABLE = "summary_repeats"  # the per-repeat summaries, beside the aggregated `summary`
LOW, HIGH = "_ci95_low", "_ci95_high"
CONFIDENCE = 0.95


def trace_for_repeat(trace_cfg: DictConfig, repeat: int) -> DictConfig:
    """The trace config of repeat `repeat`: its seed moved on by `repeat` (repeat 0: unchanged)."""
    trace_cfg = copy.deepcopy(trace_cfg)
    with open_dict(trace_cfg):
        trace_cfg.seed = trace_cfg.get("seed", 0) + repeat
    return trace_cfg


def tag_repeat(table: pd.DataFrame, repeat: int) -> pd.DataFrame:
    """`table` with a `repeat` column after `engine`."""
    table = table.copy()
    table.insert(table.columns.get_loc("engine") + 1, REPEAT, repeat)
    return table


def first_repeat(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first repeat (all rows of a table without repeats): what a figure of one
    replay in time, a timeline say, can draw without overlaying different traces; rows of a run
    without repeats (NaN in a gathered table) are kept."""
    if REPEAT not in table.columns:
        return table
    return table[table[REPEAT].isna() | (table[REPEAT] == table[REPEAT].min())]


def interval_columns(metric: str) -> tuple[str, str]:
    return metric + LOW, metric + HIGH


def has_intervals(summary: pd.DataFrame, metric: str) -> bool:
    return all(column in summary.columns for column in interval_columns(metric))


def mean_interval(values: pd.Series) -> tuple[float, float, float]:
    """Mean of the non-NaN `values` and the Student-t 95 % interval of that mean (NaN bounds
    with fewer than two values)."""
    values = values.dropna().astype(float)
    n = len(values)
    if n == 0:
        return np.nan, np.nan, np.nan
    mean = float(values.mean())
    if n < 2:
        return mean, np.nan, np.nan
    from scipy import stats  # here: the tables and figures that only read intervals need no scipy

    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * float(values.std(ddof=1)) / np.sqrt(n)
    return mean, mean - half, mean + half


def aggregate_repeats(per_repeat: pd.DataFrame) -> pd.DataFrame:
    """The across-repeat summary of per-repeat summaries (harness.results.metrics.summary_table rows with a
    `repeat` column): one row per engine and class, the leading columns as they were, `repeats`
    before `priority_class`, then each numeric metric's mean, then every metric's interval."""
    at = per_repeat.columns.get_loc("priority_class")
    keys = [c for c in per_repeat.columns[: at + 1] if c != REPEAT]
    metrics = [c for c in per_repeat.columns[at + 1 :] if pd.api.types.is_numeric_dtype(per_repeat[c])]
    rows = []
    for _, group in per_repeat.groupby(keys, sort=False, dropna=False):
        row = group.iloc[0][keys].to_dict()
        row[REPEATS] = group[REPEAT].nunique()
        intervals = {}
        for metric in metrics:
            row[metric], *bounds = mean_interval(group[metric])
            intervals |= dict(zip(interval_columns(metric), bounds))
        rows.append({**row, **intervals})
    summary = pd.DataFrame(rows)
    leading = keys[:-1] + [REPEATS, "priority_class"]
    return summary[leading + [c for c in summary.columns if c not in leading]]
