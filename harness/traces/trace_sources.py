"""Readers that turn public workload data into request rows (lengths, and arrivals where known).

Each reader returns a DataFrame with request_id, prompt_len, output_len and source, plus
arrival_s (seconds from the first request kept, sorted) when the data has timestamps, and
prompt_ids when it has text. Ids of file-based rows are `<source>-<0-based data row in the
file>`, so a trace row can be traced back to the line it came from. Class assignment and
arrival processes are the builder's job (harness.traces.build_trace), not the readers'.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.traces.trace_schema import TraceError, read_jsonl

PathLike = str | os.PathLike
Encode = Callable[[str, bool], list[int]]  # (text, add_bos) -> token ids

# Known layouts of plain length tables: (prompt column, output column, arrival column, units per second).
LENGTH_TABLE_LAYOUTS = (
    ("num_prefill_tokens", "num_decode_tokens", "arrived_at", 1.0),  # Vidur / Splitwise, etalon
    ("input_toks", "output_toks", "arrival_time_ns", 1e9),  # LLMServingSim
    ("prompt_len", "output_len", "arrival_s", 1.0),  # this project's own trace columns
)

OVERSAMPLE_STREAM = 1  # numpy seed sequence [seed, 1]: the oversampling draw, apart from the shuffle's stream

log = logging.getLogger(__name__)


@functools.cache
def _mixtral_tokenizer():
    # Imported here: mistral_common is slow to import and only ShareGPT text needs it.
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.v1().instruct_tokenizer.tokenizer


def mixtral_encode(text: str, add_bos: bool) -> list[int]:
    """Token ids of `text` as Mixtral-8x7B sees them (mistral_common's v1 SentencePiece model)."""
    return _mixtral_tokenizer().encode(text, bos=add_bos, eos=False)


def read_sharegpt(
    paths: PathLike | Sequence[PathLike],
    *,
    seed: int = 0,
    num_requests: int | None = None,
    min_len: int = 4,
    max_prompt_len: int = 1024,
    max_total_len: int = 2048,
    fixed_output_len: int | None = None,
    oversample: bool = False,
    encode: Encode | None = None,
) -> pd.DataFrame:
    """ShareGPT conversations as requests, the way vLLM's benchmark samples them.

    Keeps conversations with >= 2 turns whose first turn is from `human`; the prompt is that
    turn (tokenized with BOS), the output length is the next turn's token count (no BOS).
    Shuffles with numpy default_rng(seed), then keeps rows passing vLLM's filters (prompt and
    output >= min_len, prompt <= max_prompt_len, prompt + output <= max_total_len), stopping
    once `num_requests` rows are kept (None: all). `paths` are concatenated in order.
    `fixed_output_len` (as vLLM's option) replaces the reply's length, so prompt-only files
    (one human turn per entry) work too; the output minimum is then not checked.
    `oversample`: when fewer rows pass than `num_requests`, the rest are drawn from the kept rows
    with replacement (seeded), as vLLM's `maybe_oversample_requests` does; a copy's request id is
    the original's with `@1`, `@2`, ... appended.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    conversations = _sharegpt_conversations(paths, min_turns=1 if fixed_output_len else 2)
    order = np.random.default_rng(seed).permutation(len(conversations))
    encode = encode or mixtral_encode
    rows = []
    for conversation in conversations.iloc[order].itertuples(index=False):
        prompt_ids = encode(conversation.prompt, True)
        output_len = fixed_output_len or len(encode(conversation.reply, False))
        too_short = len(prompt_ids) < min_len or (output_len < min_len and not fixed_output_len)
        if too_short or len(prompt_ids) > max_prompt_len or len(prompt_ids) + output_len > max_total_len:
            continue
        rows.append((conversation.request_id, len(prompt_ids), output_len, prompt_ids))
        if num_requests is not None and len(rows) == num_requests:
            break
    frame = pd.DataFrame(rows, columns=["request_id", "prompt_len", "output_len", "prompt_ids"])
    if oversample and num_requests is not None and len(frame) < num_requests:
        frame = _oversampled(frame, num_requests, seed)
    frame["source"] = "sharegpt"
    return frame


def _oversampled(frame: pd.DataFrame, num_requests: int, seed: int) -> pd.DataFrame:
    """`frame` followed by rows drawn from it with replacement, up to `num_requests` rows."""
    drawn = np.random.default_rng([seed, OVERSAMPLE_STREAM]).choice(len(frame), num_requests - len(frame))
    copies = frame.iloc[drawn].reset_index(drop=True)
    copy_number = copies.groupby("request_id").cumcount() + 1
    copies["request_id"] = copies["request_id"] + "@" + copy_number.astype(str)
    return pd.concat([frame, copies], ignore_index=True)


def _sharegpt_conversations(paths: Sequence[PathLike], min_turns: int) -> pd.DataFrame:
    """First human turn and its reply of each conversation with >= min_turns turns, in file order."""
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as file:
            entries = json.load(file)
        if not isinstance(entries, list):
            raise TraceError(f"{path}: expected a JSON list of {{id, conversations}} entries (ShareGPT format)")
        for entry in entries:
            turns = entry.get("conversations") or []
            if len(turns) >= min_turns and turns[0].get("from") == "human":
                reply = turns[1].get("value", "") if len(turns) > 1 else ""
                rows.append((str(entry.get("id", "")), turns[0].get("value", ""), reply))
    if not rows:
        hint = "; for prompt-only files give fixed_output_len" if min_turns > 1 else ""
        raise TraceError(f"{', '.join(map(str, paths))}: no conversation has {min_turns}+ turns starting "
                         f"with a human turn{hint}")
    frame = pd.DataFrame(rows, columns=["request_id", "prompt", "reply"])
    # A repeated id gets a suffix (#1, #2, ...) so ids stay unique and the first keeps its own.
    repeat = frame.groupby("request_id").cumcount()
    frame["request_id"] = frame["request_id"].where(repeat == 0, frame["request_id"] + "#" + repeat.astype(str))
    return frame


def read_azure(path: PathLike) -> pd.DataFrame:
    """Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens), e.g. Splitwise 2023."""
    raw = _read_table(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    times = pd.to_datetime(raw["TIMESTAMP"], format="ISO8601")  # 7 fractional digits, kept to the ns
    stem = Path(path).stem
    source = "azure_" + stem.rsplit("_", 1)[-1].lower() if "_" in stem else "azure"
    frame = pd.DataFrame({
        "arrival_s": (times - times.min()).dt.total_seconds(),
        "prompt_len": raw["ContextTokens"],
        "output_len": raw["GeneratedTokens"],
    })
    return _finish(frame, source)


def read_burstgpt(path: PathLike, *, model: str | None = None, drop_failed: bool = True) -> pd.DataFrame:
    """BurstGPT CSV (Timestamp in s, Model, Request tokens, Response tokens).

    Failed requests (0 request or 0 response tokens) are dropped by default; how many is
    logged and kept in `frame.attrs["num_failed_dropped"]`. `model` keeps one model's rows.
    """
    raw = _read_table(path, ("Timestamp", "Model", "Request tokens", "Response tokens"))
    keep = pd.Series(True, index=raw.index)
    if model is not None:
        if model not in set(raw["Model"]):
            raise TraceError(f"{path}: no rows for model {model!r}; models found: {sorted(set(raw['Model']))}")
        keep &= raw["Model"] == model
    failed = keep & ((raw["Request tokens"] == 0) | (raw["Response tokens"] == 0))
    if drop_failed:
        keep &= ~failed
        log.info("%s: dropped %d failed requests (0 request or response tokens)", path, int(failed.sum()))
    frame = pd.DataFrame({
        "arrival_s": raw["Timestamp"].astype("float64"),  # already seconds; _finish counts from the first kept
        "prompt_len": raw["Request tokens"],
        "output_len": raw["Response tokens"],
    })[keep]
    frame = _finish(frame, "burstgpt")
    frame.attrs["num_failed_dropped"] = int(failed.sum()) if drop_failed else 0
    return frame


def read_mooncake(path: PathLike) -> pd.DataFrame:
    """Mooncake FAST'25 JSONL trace (timestamp in ms, input_length, output_length)."""
    raw = _read_table(path, ("timestamp", "input_length", "output_length"))
    frame = pd.DataFrame({
        "arrival_s": _seconds_from_first(raw["timestamp"], 1000.0),
        "prompt_len": raw["input_length"],
        "output_len": raw["output_length"],
    })
    return _finish(frame, "mooncake_" + Path(path).stem.removesuffix("_trace"))


def read_length_table(path: PathLike) -> pd.DataFrame:
    """A CSV/TSV of per-request lengths in one of LENGTH_TABLE_LAYOUTS, with arrivals if it has them.

    Covers Vidur/Splitwise (arrived_at, num_prefill_tokens, num_decode_tokens), etalon's length
    statistics (no arrivals) and LLMServingSim TSVs (input_toks, output_toks, arrival_time_ns).
    A priority_class column, if present, is kept so a file can bring its own LS/BE labels.
    """
    raw = _read_table(path, ())
    for prompt_column, output_column, arrival_column, units_per_second in LENGTH_TABLE_LAYOUTS:
        if {prompt_column, output_column} <= set(raw.columns):
            break
    else:
        layouts = [f"({prompt}, {output}[, {arrival}])" for prompt, output, arrival, _ in LENGTH_TABLE_LAYOUTS]
        raise TraceError(f"{path}: no known length columns; found {list(raw.columns)}; "
                         f"expected one of {', '.join(layouts)}")
    frame = pd.DataFrame({"prompt_len": raw[prompt_column], "output_len": raw[output_column]})
    if arrival_column in raw.columns:
        frame.insert(0, "arrival_s", _seconds_from_first(raw[arrival_column], units_per_second))
    if "priority_class" in raw.columns:
        frame["priority_class"] = raw["priority_class"]
    return _finish(frame, Path(path).stem)


def synthetic_lengths(
    num_requests: int,
    *,
    seed: int = 0,
    distribution: str = "uniform",
    prompt_range: tuple[int, int] = (16, 512),
    output_range: tuple[int, int] = (16, 256),
    sigma: float = 0.5,
) -> pd.DataFrame:
    """Seeded random lengths, each within its inclusive range.

    `uniform` draws integers evenly; `lognormal` draws around the range's geometric mean with
    log-space standard deviation `sigma` and clips to the range (real length data is skewed so).
    """
    rng = np.random.default_rng(seed)

    def draw(low: int, high: int) -> np.ndarray:
        if not 1 <= low <= high:
            raise ValueError(f"a length range must satisfy 1 <= low <= high, got ({low}, {high})")
        if distribution == "uniform":
            return rng.integers(low, high, size=num_requests, endpoint=True)
        if distribution == "lognormal":
            lengths = rng.lognormal(np.log(np.sqrt(low * high)), sigma, size=num_requests)
            return np.clip(np.rint(lengths), low, high).astype("int64")
        raise ValueError(f"distribution must be 'uniform' or 'lognormal', got {distribution!r}")

    frame = pd.DataFrame({"prompt_len": draw(*prompt_range), "output_len": draw(*output_range)})
    return _finish(frame, "synthetic")


def _read_table(path: PathLike, required: Sequence[str]) -> pd.DataFrame:
    """Read CSV, TSV or JSONL by suffix and check that `required` columns are there."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        raw = read_jsonl(path)
    else:
        raw = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    missing = [name for name in required if name not in raw.columns]
    if missing:
        raise TraceError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                         f"found columns {list(raw.columns)}")
    return raw


def _seconds_from_first(times: pd.Series, units_per_second: float) -> pd.Series:
    # Subtract in the file's own unit first: exact for integer ns/ms, no float noise in the result.
    return (times - times.min()).astype("float64") / units_per_second


def _finish(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Ids from the file row, arrivals sorted (stably) and counted from the first request kept."""
    frame = frame.copy()
    frame.insert(0, "request_id", [f"{source}-{row}" for row in frame.index])
    if "arrival_s" in frame.columns and len(frame):
        frame = frame.sort_values("arrival_s", kind="stable")
        frame["arrival_s"] = frame["arrival_s"] - frame["arrival_s"].iloc[0]
    frame["source"] = source
    return frame.reset_index(drop=True)
