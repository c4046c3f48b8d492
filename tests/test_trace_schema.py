"""harness.traces.trace_schema: every malformed trace fails with file, row, column and expectation named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.traces.trace_schema import TraceError, load_trace, save_trace, validate_trace

HEADER = "request_id,arrival_s,prompt_len,output_len,priority_class"


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def good_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": ["a", "b", "c"],
        "arrival_s": [0.0, 0.25, 0.25],
        "prompt_len": [2, 3, 1],
        "output_len": [4, 1, 2],
        "priority_class": ["LS", "BE", "BE"],
        "prompt_ids": [[1, 7], [1, 8, 9], [1]],
        "source": ["test"] * 3,
    })


# (rows after the header, data row, file line, column, words the message must contain)
MALFORMED_CSV = {
    "negative arrival": ("a,0,1,1,LS\nb,-1.0,1,1,BE", 1, 3, "arrival_s", ["-1.0", "negative", "expected seconds >= 0"]),
    "unsorted arrival": ("a,0,1,1,LS\nb,2,1,1,BE\nc,1.5,1,1,BE", 2, 4, "arrival_s", ["1.5", "earlier than data row 1"]),
    "NaN arrival": ("a,0,1,1,LS\nb,NaN,1,1,BE", 1, 3, "arrival_s", ["missing (NaN)"]),
    "blank arrival": ("a,,1,1,LS", 0, 2, "arrival_s", ["missing (NaN)"]),
    "inf arrival": ("a,inf,1,1,LS", 0, 2, "arrival_s", ["not finite"]),
    "text arrival": ("a,0,1,1,LS\nb,soon,1,1,BE", 1, 3, "arrival_s", ["'soon'", "not a number"]),
    "zero output": ("a,0,1,1,LS\nb,1,5,0,BE", 1, 3, "output_len", ["0 is below 1", "tokens >= 1"]),
    "zero prompt": ("a,0,0,1,LS", 0, 2, "prompt_len", ["0 is below 1"]),
    "fractional length": ("a,0,1.5,1,LS", 0, 2, "prompt_len", ["1.5", "not a whole number"]),
    "unknown class": ("a,0,1,1,LS\nb,0,1,1,urgent", 1, 3, "priority_class", ["'urgent'", "'LS' or 'BE'"]),
    "lowercase class": ("a,0,1,1,ls", 0, 2, "priority_class", ["'ls'"]),
    "duplicate id": ("a,0,1,1,LS\nb,0,1,1,BE\na,1,1,1,BE", 2, 4, "request_id", ["'a'", "repeats the id of data row 0"]),
    "empty id": ("a,0,1,1,LS\n,1,1,1,BE", 1, 3, "request_id", ["empty"]),
}


@pytest.mark.parametrize("case", MALFORMED_CSV)
def test_malformed_csv_names_file_row_line_and_column(tmp_path: Path, case: str) -> None:
    rows, row, line, column, words = MALFORMED_CSV[case]
    path = write(tmp_path, f"{HEADER}\n{rows}\n")
    with pytest.raises(TraceError) as error:
        load_trace(path)
    message = str(error.value)
    assert message.startswith(f"{path}: data row {row} (file line {line}), column '{column}': ")
    for word in words:
        assert word in message
    assert "expected" in message


def test_prompt_ids_length_must_equal_prompt_len(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER},prompt_ids\na,0,2,1,LS,\"[1, 5]\"\nb,0,3,1,BE,\"[1, 5]\"\n")
    with pytest.raises(TraceError, match=r"data row 1 \(file line 3\), column 'prompt_ids'.*length 2 but prompt_len is 3"):
        load_trace(path)


def test_prompt_ids_must_be_a_list_of_integers(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER},prompt_ids\na,0,2,1,LS,\"[1, 'x']\"\n")
    with pytest.raises(TraceError, match=r"data row 0 .*column 'prompt_ids'.*not a list of integer token ids"):
        load_trace(path)


def test_bad_priority_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER},priority\na,0,1,1,LS,0\nb,0,1,1,BE,high\n")
    with pytest.raises(TraceError, match=r"data row 1 \(file line 3\), column 'priority': 'high' is not a number"):
        load_trace(path)


def test_missing_column_is_named_with_the_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path, "request_id,arrival_s,prompt_len,priority_class\na,0,1,LS\n")
    with pytest.raises(TraceError) as error:
        load_trace(path)
    message = str(error.value)
    assert str(path) in message and "'output_len'" in message
    assert "found columns ['request_id', 'arrival_s', 'prompt_len', 'priority_class']" in message


@pytest.mark.parametrize("text", ["", "\n\n", f"{HEADER}\n"])
def test_empty_file_or_no_rows(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TraceError, match=r"empty|no header|no data rows") as error:
        load_trace(path)
    assert str(path) in str(error.value)


def test_jsonl_errors_name_the_file_line(tmp_path: Path) -> None:
    rows = [{"request_id": "a", "arrival_s": 0, "prompt_len": 1, "output_len": 1, "priority_class": "LS"},
            {"request_id": "b", "arrival_s": -2, "prompt_len": 1, "output_len": 1, "priority_class": "BE"}]
    path = write(tmp_path, "\n".join(json.dumps(row) for row in rows) + "\n", "trace.jsonl")
    with pytest.raises(TraceError, match=r"trace.jsonl: data row 1 \(file line 2\), column 'arrival_s': -2.0 is negative"):
        load_trace(path)


def test_parquet_errors_name_the_data_row(tmp_path: Path) -> None:
    frame = good_frame()
    frame.loc[2, "priority_class"] = "XX"
    path = tmp_path / "trace.parquet"
    frame.to_parquet(path)  # written by plain pandas, bypassing save_trace's validation
    with pytest.raises(TraceError, match=r"trace.parquet: data row 2, column 'priority_class': 'XX'"):
        load_trace(path)


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"unknown trace format '.xlsx'"):
        load_trace(write(tmp_path, "x", "trace.xlsx"))


def test_validate_normalizes_order_dtypes_and_default_priority() -> None:
    frame = good_frame()[["source", "priority_class", "output_len", "prompt_len", "arrival_s", "request_id", "prompt_ids"]]
    frame["arrival_s"] = [0, 1, 1]  # integers are fine as seconds
    frame["note"] = ["x", "y", "z"]  # extra columns are kept, after the schema's
    trace = validate_trace(frame, source="frame")
    assert list(trace.columns) == ["request_id", "arrival_s", "prompt_len", "output_len", "priority_class",
                                   "priority", "prompt_ids", "source", "note"]
    assert trace["arrival_s"].dtype == np.float64
    assert trace["prompt_len"].dtype == np.int64 and trace["priority"].dtype == np.int64
    assert trace["priority"].tolist() == [0, 1, 1]
    assert trace["prompt_ids"].tolist() == [[1, 7], [1, 8, 9], [1]]


def test_blank_priority_cells_take_the_class_default(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER},priority\n007,0,1,1,LS,\nNA,0,1,1,BE,5\n")
    trace = load_trace(path)
    assert trace["priority"].tolist() == [0, 5]
    assert trace["request_id"].tolist() == ["007", "NA"]  # ids stay text


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_save_then_load_round_trips_and_is_byte_stable(tmp_path: Path, suffix: str) -> None:
    frame = good_frame()
    frame["arrival_s"] = [0.0, 0.1 + 0.2, 1 / 3]  # floats that a rounding writer would change
    path = save_trace(frame, tmp_path / f"trace{suffix}")
    first = path.read_bytes()
    save_trace(frame, path)
    assert path.read_bytes() == first
    pd.testing.assert_frame_equal(load_trace(path), validate_trace(frame))
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


def test_parquet_has_fixed_types_and_no_pandas_metadata(tmp_path: Path) -> None:
    path = save_trace(good_frame(), tmp_path / "trace.parquet")
    parquet = pq.ParquetFile(path)
    assert b"pandas" not in (parquet.schema_arrow.metadata or {})
    assert parquet.schema_arrow.field("prompt_ids").type == pa.list_(pa.int64())
    assert parquet.schema_arrow.field("request_id").type == pa.string()
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"


def test_save_refuses_an_invalid_frame(tmp_path: Path) -> None:
    frame = good_frame()
    frame.loc[1, "arrival_s"] = -1.0
    with pytest.raises(TraceError, match="data row 1, column 'arrival_s'"):
        save_trace(frame, tmp_path / "trace.parquet")
    assert not (tmp_path / "trace.parquet").exists()
