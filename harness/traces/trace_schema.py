"""The trace table (DESIGN.md, "Requests and traces"): load, validate, save.

Every error names the file, the 0-based data row, the column, the bad value and what was
expected, so a user can fix a hand-written trace without reading this code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.results.atomic import atomic_write
from qllm.errors import UserError
from qllm.request import DEFAULT_PRIORITY, PRIORITY_CLASSES

REQUIRED_COLUMNS = ("request_id", "arrival_s", "prompt_len", "output_len", "priority_class")
OPTIONAL_COLUMNS = ("priority", "prompt_ids", "source")
ARROW_TYPES = {
    "request_id": pa.string(),
    "arrival_s": pa.float64(),
    "prompt_len": pa.int64(),
    "output_len": pa.int64(),
    "priority_class": pa.string(),
    "priority": pa.int64(),
    "prompt_ids": pa.list_(pa.int64()),
    "source": pa.string(),
}
PARQUET_COMPRESSION = "zstd"
MISSING_TEXT = ("", "nan", "na", "n/a", "null", "none")  # cells read as missing, not as "not a number"
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")


class TraceError(UserError, ValueError):
    """A trace file or frame that does not match the trace schema."""


def load_trace(path: str | os.PathLike) -> pd.DataFrame:
    """Read a trace (Parquet, CSV or JSONL, by suffix) and return it validated and normalized."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    if path.stat().st_size == 0:
        raise TraceError(f"{path}: the file is empty; expected a header and at least one request")
    if suffix not in PARQUET_SUFFIXES + CSV_SUFFIXES + JSONL_SUFFIXES:
        raise TraceError(f"{path}: unknown trace format {suffix!r}; expected one of "
                         f"{', '.join(PARQUET_SUFFIXES + CSV_SUFFIXES + JSONL_SUFFIXES)}")
    try:
        frame, header_lines = _read_table(path, suffix)
    except pd.errors.EmptyDataError as error:
        raise TraceError(f"{path}: the file has no header and no rows; expected a trace table") from error
    except (pd.errors.ParserError, ValueError, pa.ArrowException) as error:
        raise TraceError(f"{path}: cannot be read as a {suffix[1:]} trace: {error}") from error
    return validate_trace(frame, source=str(path), header_lines=header_lines)


def _read_table(path: Path, suffix: str) -> tuple[pd.DataFrame, int | None]:
    """The raw table and how many file lines come before its first data row (None: not a text file)."""
    if suffix in PARQUET_SUFFIXES:
        return pd.read_parquet(path), None
    if suffix in CSV_SUFFIXES:
        # Only a blank cell is missing, so an id such as "NA" stays an id; "007" stays text.
        frame = pd.read_csv(path, dtype={"request_id": str, "priority_class": str, "source": str},
                            keep_default_na=False, na_values=[""])
        return frame, 1
    return read_jsonl(path), 0


def read_jsonl(path: str | os.PathLike) -> pd.DataFrame:
    """One row per JSON object line, values as written: no date or dtype guessing ("007" stays text)."""
    records = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise TraceError(f"{path}: file line {line_number} is not valid JSON: {error}") from error
    return pd.DataFrame.from_records(records)


def validate_trace(frame: pd.DataFrame, source: str = "<trace>", header_lines: int | None = None) -> pd.DataFrame:
    """Check `frame` against the trace schema; return a copy with canonical column order and dtypes.

    `header_lines` is how many file lines precede the first data row (1 for CSV, 0 for JSONL);
    when given, errors also quote the file line number.
    """
    where = _Locator(source, header_lines)
    missing = [name for name in REQUIRED_COLUMNS if name not in frame.columns]
    if missing:
        raise TraceError(f"{source}: missing required column(s) {', '.join(map(repr, missing))}; "
                         f"found columns {list(map(str, frame.columns))}; expected {list(REQUIRED_COLUMNS)}")
    if len(frame) == 0:
        raise TraceError(f"{source}: no data rows; expected at least one request")
    frame = frame.reset_index(drop=True)
    out = pd.DataFrame({"request_id": _check_request_ids(frame["request_id"], where)})
    out["arrival_s"] = _check_arrivals(frame["arrival_s"], where)
    out["prompt_len"] = _check_token_counts(frame["prompt_len"], where)
    out["output_len"] = _check_token_counts(frame["output_len"], where)
    out["priority_class"] = _check_classes(frame["priority_class"], where)
    out["priority"] = _check_priorities(frame.get("priority"), out["priority_class"], where)
    if "prompt_ids" in frame.columns:
        out["prompt_ids"] = _check_prompt_ids(frame["prompt_ids"], out["prompt_len"], where)
    if "source" in frame.columns:
        out["source"] = frame["source"].astype(str)
    extra = [name for name in frame.columns if name not in out.columns]
    return pd.concat([out, frame[extra]], axis=1) if extra else out


class _Locator:
    """Formats 'file: data row i (line n), column c: ...' messages."""

    def __init__(self, source: str, header_lines: int | None):
        self.source, self.header_lines = source, header_lines

    def error(self, row: int, column: str, value: object, problem: str, expected: str) -> TraceError:
        value = _plain(value)
        line = f" (file line {row + self.header_lines + 1})" if self.header_lines is not None else ""
        return TraceError(f"{self.source}: data row {row}{line}, column {column!r}: "
                          f"{value!r} {problem}; expected {expected}")


def _first(mask: pd.Series | np.ndarray) -> int | None:
    hits = np.flatnonzero(np.asarray(mask, dtype=bool))
    return int(hits[0]) if len(hits) else None


def _check_request_ids(ids: pd.Series, where: _Locator) -> pd.Series:
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    if (row := _first(blank)) is not None:
        raise where.error(row, "request_id", ids[row], "is empty", "a non-empty id, unique in the trace")
    ids = ids.astype(str)
    if (row := _first(ids.duplicated())) is not None:
        first = int(np.flatnonzero(ids == ids[row])[0])
        raise where.error(row, "request_id", ids[row], f"repeats the id of data row {first}",
                          "ids unique in the trace")
    return ids


def _as_numbers(values: pd.Series, column: str, expected: str, where: _Locator) -> pd.Series:
    """Numeric view of `values`; text that is not a number, or a missing value, is an error."""
    numbers = pd.to_numeric(values, errors="coerce")
    missing = values.isna() | values.astype(str).str.strip().str.lower().isin(MISSING_TEXT)
    if (row := _first(numbers.isna() & ~missing)) is not None:
        raise where.error(row, column, values[row], "is not a number", expected)
    if (row := _first(numbers.isna())) is not None:
        raise where.error(row, column, values[row], "is missing (NaN)", expected)
    if (row := _first(~np.isfinite(numbers.astype("float64")))) is not None:
        raise where.error(row, column, values[row], "is not finite", expected)
    return numbers


def _check_arrivals(values: pd.Series, where: _Locator) -> pd.Series:
    expected = "seconds >= 0 from trace start, non-decreasing"
    arrivals = _as_numbers(values, "arrival_s", expected, where).astype("float64")
    if (row := _first(arrivals < 0)) is not None:
        raise where.error(row, "arrival_s", arrivals[row], "is negative", "seconds >= 0")
    if (row := _first(arrivals.diff() < 0)) is not None:
        raise where.error(row, "arrival_s", arrivals[row], f"is earlier than data row {row - 1}'s "
                          f"{arrivals[row - 1]!r}", "arrival_s non-decreasing (sort the trace by arrival_s)")
    return arrivals


def _check_whole_numbers(values: pd.Series, column: str, expected: str, where: _Locator) -> pd.Series:
    numbers = _as_numbers(values, column, expected, where)
    if (row := _first(numbers != np.round(numbers))) is not None:
        raise where.error(row, column, values[row], "is not a whole number", expected)
    return numbers.astype("int64")


def _check_token_counts(values: pd.Series, where: _Locator) -> pd.Series:
    column, expected = str(values.name), "a whole number of tokens >= 1"
    counts = _check_whole_numbers(values, column, expected, where)
    if (row := _first(counts < 1)) is not None:
        raise where.error(row, column, int(counts[row]), "is below 1", expected)
    return counts


def _check_classes(values: pd.Series, where: _Locator) -> pd.Series:
    if (row := _first(~values.isin(PRIORITY_CLASSES))) is not None:
        raise where.error(row, "priority_class", values[row], "is not a priority class",
                          " or ".join(map(repr, PRIORITY_CLASSES)))
    return values.astype(str)


def _check_priorities(values: pd.Series | None, classes: pd.Series, where: _Locator) -> pd.Series:
    """Priorities as given; a missing column or blank cell takes the class default (LS=0, BE=1)."""
    defaults = classes.map(DEFAULT_PRIORITY).astype("int64")
    if values is None:
        return defaults
    filled = values.astype(object).where(values.notna(), defaults)
    return _check_whole_numbers(filled, "priority", "an integer (lower = more urgent)", where)


def _check_prompt_ids(values: pd.Series, prompt_lens: pd.Series, where: _Locator) -> pd.Series:
    """Each cell a list of ints (a JSON list in CSV) of length prompt_len; a blank cell is allowed."""
    checked = []
    for row, cell in enumerate(values):
        if cell is None or (np.ndim(cell) == 0 and pd.isna(cell)):
            checked.append(None)
            continue
        ids = _parse_id_list(cell)
        if ids is None:
            raise where.error(row, "prompt_ids", cell, "is not a list of integer token ids",
                              "a list such as [1, 415, 2936]")
        if len(ids) != prompt_lens[row]:
            raise where.error(row, "prompt_ids", f"<{len(ids)} ids>", f"has length {len(ids)} but "
                              f"prompt_len is {prompt_lens[row]}", "len(prompt_ids) == prompt_len")
        checked.append(ids)
    return pd.Series(checked, index=values.index, dtype=object)


def _parse_id_list(cell: object) -> list[int] | None:
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError:
            return None
    array = np.asarray(cell)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        return None
    return array.astype("int64").tolist()


def save_trace(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a trace (Parquet, CSV or JSONL, by suffix) atomically; the same frame gives the same bytes."""
    path = Path(path)
    suffix = path.suffix.lower()
    frame = validate_trace(frame, source=f"trace to be saved as {path}")
    if suffix in PARQUET_SUFFIXES:
        write = lambda tmp: _write_parquet(frame, str(tmp))  # noqa: E731
    elif suffix in CSV_SUFFIXES:
        write = lambda tmp: _to_text_frame(frame).to_csv(tmp, index=False, lineterminator="\n")  # noqa: E731
    elif suffix in JSONL_SUFFIXES:
        write = lambda tmp: _write_jsonl(frame, str(tmp))  # noqa: E731
    else:
        raise TraceError(f"{path}: unknown trace format {suffix!r}; expected one of "
                         f"{', '.join(PARQUET_SUFFIXES + CSV_SUFFIXES + JSONL_SUFFIXES)}")
    return atomic_write(path, write)


def _write_parquet(frame: pd.DataFrame, path: str) -> None:
    # Explicit types and no pandas metadata: the bytes depend only on the values (and the pyarrow version).
    arrays = [pa.array(frame[name].tolist(), type=ARROW_TYPES.get(name)) for name in frame.columns]
    table = pa.Table.from_arrays(arrays, names=[str(name) for name in frame.columns])
    pq.write_table(table, path, compression=PARQUET_COMPRESSION, use_dictionary=False, write_statistics=False)


def _to_text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    if "prompt_ids" not in frame.columns:
        return frame
    text = frame.copy()
    text["prompt_ids"] = [None if ids is None else json.dumps(ids) for ids in frame["prompt_ids"]]
    return text


def _write_jsonl(frame: pd.DataFrame, path: str) -> None:
    # json.dumps writes floats with repr, so arrival_s round-trips exactly (pandas' to_json rounds).
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for record in frame.to_dict(orient="records"):
            out.write(json.dumps({key: _plain(value) for key, value in record.items()}) + "\n")


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value
