"""The comparison a run or sweep prints: one block of rows per engine, one row per class."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.results.repeats import has_intervals, interval_columns

CLASS_ORDER = {"LS": 0, "BE": 1, "all": 2}
# (summary column, header, kind): kind "time" picks ms or s per column, "pct" prints a percentage.
COLUMNS = [
    ("n", "n", "int"),
    ("n_rejected", "rejected", "int"),
    ("n_failed", "failed", "int"),
    ("ttft_s_p50", "TTFT p50", "time"),
    ("ttft_s_p99", "TTFT p99", "time"),
    ("tpot_s_mean", "TPOT mean", "time"),
    ("e2e_s_p50", "e2e p50", "time"),
    ("e2e_s_p99", "e2e p99", "time"),
    ("slo_attainment", "SLO met %", "pct"),
    ("throughput_tok_s", "tok/s", "float"),
]


def _row_keys(summary: pd.DataFrame) -> list[str]:
    """`engine` plus the swept parameters (leading columns) that differ between rows."""
    leading = list(summary.columns[: summary.columns.get_loc("priority_class")])
    varying = [c for c in leading if c != "engine" and summary[c].nunique(dropna=False) > 1]
    return ["engine", *varying]


def three_digits(v: float) -> str:
    """About three significant digits, never an exponent: 0.0213, 2.25, 13.9, 1234."""
    decimals = 0 if v == 0 else min(4, max(0, 2 - int(np.floor(np.log10(abs(v))))))
    return f"{v:.{decimals}f}"


def _format_column(values: pd.Series, header: str, kind: str, in_ms: bool) -> tuple[str, pd.Series]:
    """A column as strings, with its unit in the header."""
    fmt = lambda f: values.map(lambda v: "-" if pd.isna(v) else f(v))  # noqa: E731
    if kind == "int":
        return header, fmt(lambda v: f"{int(v)}")
    if kind == "pct":
        return header, fmt(lambda v: f"{100 * v:.1f}")
    if kind == "float":
        return header, fmt(three_digits)
    scale, unit = (1000.0, "ms") if in_ms else (1.0, "s")
    return f"{header} ({unit})", fmt(lambda v: three_digits(scale * v))


def _with_half_interval(values: pd.Series, rows: pd.DataFrame, column: str, header: str, kind: str, in_ms: bool):
    """`values` as "mean ± half its 95 % interval" where the summary has one (repeats, harness.results.repeats);
    counts are left alone (their interval over repeats is no news)."""
    if kind == "int" or not has_intervals(rows, column):
        return values
    low, high = interval_columns(column)
    _, halves = _format_column((rows[high] - rows[low]) / 2, header, kind, in_ms)
    return values + halves.map(lambda half: "" if half == "-" else f" ± {half}")


def _left_aligned(values: pd.Series, header: str) -> pd.Series:
    width = max([len(header), *values.str.len()])
    return values.str.ljust(width)


def _ratio_lines(summary: pd.DataFrame, keys: list[str], reference_engine: str) -> list[str]:
    """Each engine's LS TTFT p50 as a multiple of the reference engine's at the same parameters."""
    ls = summary[summary["priority_class"] == "LS"]
    ref = ls[ls["engine"] == reference_engine]
    if ls.empty or ref.empty:
        return [f"(no LS TTFT ratio: reference engine {reference_engine!r} has no LS rows)"]
    others = [k for k in keys if k != "engine"]
    ref = ref[others + ["ttft_s_p50"]].rename(columns={"ttft_s_p50": "ref_ttft_s"})
    rest = ls[ls["engine"] != reference_engine]
    merged = rest.merge(ref, on=others) if others else rest.merge(ref, how="cross")
    lines = []
    for _, row in merged.iterrows():
        ratio = row["ttft_s_p50"] / row["ref_ttft_s"] if row["ref_ttft_s"] > 0 else np.nan
        where = "".join(f" {k}={row[k]}" for k in others)
        value = "n/a" if pd.isna(ratio) else f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2g}x"
        lines.append(f"{row['engine']}{where} LS TTFT p50 = {value} {reference_engine}")
    return lines


def _reason_lines(requests: pd.DataFrame | None) -> list[str]:
    """Per engine, how many requests were rejected or failed, and the first one's reason."""
    if requests is None or "error" not in requests:
        return []
    unserved = requests[requests["status"].isin(["rejected", "failed"])]
    return [f"{engine}: {len(rows)} rejected or failed; the first: {rows['status'].iloc[0]}: {rows['error'].iloc[0]}"
            for engine, rows in unserved.groupby("engine", sort=False)]  # fmt: skip


def comparison_table(summary: pd.DataFrame, reference_engine: str = "qllm", requests: pd.DataFrame | None = None) -> str:
    """A fixed-width text table of `summary` rows (harness.results.metrics.summary_table), then ratios, then
    (given the `requests` table) why requests were not served."""
    keys = _row_keys(summary)
    engines = list(dict.fromkeys([reference_engine, *summary["engine"]]))  # reference first
    rows = summary.assign(
        _engine=summary["engine"].map(engines.index),
        _order=summary["priority_class"].map(CLASS_ORDER).fillna(len(CLASS_ORDER)),
    )
    rows = rows.sort_values(["_engine", *keys[1:], "_order"], kind="stable").reset_index(drop=True)
    block = rows[keys].astype(str).agg("|".join, axis=1)
    starts_block = block != block.shift()
    shown = pd.DataFrame({k: _left_aligned(rows[k].astype(str).where(starts_block, ""), k) for k in keys})
    shown["class"] = _left_aligned(rows["priority_class"].astype(str), "class")
    times = rows[[column for column, _, kind in COLUMNS if kind == "time"]].to_numpy(dtype=float)
    in_ms = bool(np.nanmedian(np.abs(times)) < 1.0) if np.isfinite(times).any() else False
    for column, header, kind in COLUMNS:  # one time unit for the table: ms if most times are under 1 s
        values = rows[column] if column in rows else pd.Series(np.nan, index=rows.index)  # older runs lack some
        name, values = _format_column(values, header, kind, in_ms)
        shown[name] = _with_half_interval(values, rows, column, header, kind, in_ms)
    lines = shown.to_string(index=False).splitlines()
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        if starts_block[i] and i > 0:
            out.append("")  # a blank line between engines
        out.append(line)
    return "\n".join(out + ["", *_ratio_lines(summary, keys, reference_engine), *_reason_lines(requests)])
