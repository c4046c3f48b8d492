"""Trace sources, arrival processes, class assignment and the builder, on the real shared data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.traces import arrivals, build_trace as build_trace_module
from harness.traces.build_trace import build_trace
from harness.traces.reshape import cap_lengths
from harness.replay import requests_from_trace
from harness.traces.trace_schema import load_trace, save_trace
from harness.traces.trace_sources import (
    mixtral_encode,
    read_azure,
    read_burstgpt,
    read_length_table,
    read_mooncake,
    read_sharegpt,
    synthetic_lengths,
)

REPO = Path(__file__).resolve().parents[1]
SHAREGPT_PART = "sharegpt/ShareGPT_V3_unfiltered_cleaned_split.head2000.part{}of4.json"
# The exact arguments of the command in traces/README.md that built traces/sharegpt_default.parquet.
DEFAULT_TRACE_ARGS = dict(num_requests=200, seed=0, arrival="poisson", rate=25.0, ls_fraction=0.2,
                          max_prompt_len=64, max_output_len=64)


@pytest.fixture(scope="module")
def sharegpt_parts(shared_data: Path) -> list[Path]:
    return [shared_data / SHAREGPT_PART.format(part) for part in (1, 2, 3, 4)]


@pytest.fixture(scope="module")
def sharegpt_all(sharegpt_parts: list[Path]) -> pd.DataFrame:
    return read_sharegpt(sharegpt_parts, seed=0)


def words(text: str, add_bos: bool) -> list[int]:
    """A stand-in tokenizer: one token per word, 1 for BOS."""
    return ([1] if add_bos else []) + [len(word) for word in text.split()]


# --- ShareGPT ---------------------------------------------------------------------------

def test_mixtral_tokenizer_is_the_real_one() -> None:
    assert mixtral_encode("hello world", True) == [1, 6312, 28709, 1526]
    assert mixtral_encode("hello world", False) == [6312, 28709, 1526]


def test_sharegpt_keeps_vllm_filtered_conversations_in_seeded_order(sharegpt_all: pd.DataFrame) -> None:
    # 1,212 conversations start with a human turn and have a reply; vLLM's length filters keep 1,028.
    assert len(sharegpt_all) == 1028
    assert sharegpt_all["request_id"].head(3).tolist() == ["9lOYcwI_0", "Q2NTYvP_0", "49u4Vpa_0"]
    assert sharegpt_all[["prompt_len", "output_len"]].head(3).values.tolist() == [[7, 251], [11, 143], [13, 404]]
    assert sharegpt_all["request_id"].is_unique
    assert (sharegpt_all["prompt_ids"].map(len) == sharegpt_all["prompt_len"]).all()
    assert (sharegpt_all["prompt_ids"].map(lambda ids: ids[0]) == 1).all()  # BOS
    assert sharegpt_all["prompt_len"].between(4, 1024).all() and (sharegpt_all["output_len"] >= 4).all()
    assert (sharegpt_all["prompt_len"] + sharegpt_all["output_len"] <= 2048).all()


def test_sharegpt_lengths_of_the_first_conversation(sharegpt_parts: list[Path]) -> None:
    unfiltered = read_sharegpt(sharegpt_parts, seed=0, min_len=0, max_prompt_len=10**9, max_total_len=10**9)
    assert len(unfiltered) == 1212  # the data README's count of vLLM-eligible conversations
    first = json.loads(sharegpt_parts[0].read_text())[0]
    row = unfiltered.set_index("request_id").loc["QWJhYvA_0"]
    assert row["prompt_ids"] == mixtral_encode(first["conversations"][0]["value"], True)
    assert (row["prompt_len"], row["output_len"]) == (37, 276)


def test_sharegpt_stops_at_num_requests_with_the_same_rows(sharegpt_parts, sharegpt_all) -> None:
    head = read_sharegpt(sharegpt_parts, seed=0, num_requests=25)
    pd.testing.assert_frame_equal(head, sharegpt_all.head(25))
    assert read_sharegpt(sharegpt_parts, seed=1, num_requests=3)["request_id"].tolist() != head["request_id"][:3].tolist()


def test_sharegpt_eligibility_filters_and_unique_ids(tmp_path: Path) -> None:
    def turn(who: str, text: str) -> dict:
        return {"from": who, "value": text}

    entries = [
        {"id": "x", "conversations": [turn("human", "a b c d"), turn("gpt", "1 2 3 4")]},
        {"id": "x", "conversations": []},  # empty: dropped
        {"id": "y", "conversations": [turn("gpt", "a b c d"), turn("human", "1 2 3 4")]},  # gpt first: dropped
        {"id": "z", "conversations": [turn("human", "a b c d")]},  # no reply: dropped
        {"id": "x", "conversations": [turn("human", "a b c d e"), turn("gpt", "1 2 3 4 5")]},  # repeated id
        {"id": "s", "conversations": [turn("human", "a b"), turn("gpt", "1 2 3 4")]},  # prompt of 3 < 4: dropped
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries))
    frame = read_sharegpt(path, seed=0, encode=words).sort_values("request_id")
    assert frame["request_id"].tolist() == ["x", "x#1"]
    assert frame[["prompt_len", "output_len"]].values.tolist() == [[5, 4], [6, 5]]
    fixed = read_sharegpt(path, seed=0, encode=words, fixed_output_len=9)
    assert set(fixed["request_id"]) == {"x", "x#1", "z"} and set(fixed["output_len"]) == {9}


# --- timestamped and length-table sources --------------------------------------------------

def test_azure_conv_arrivals_match_vidur_replay_of_the_same_trace(shared_data: Path) -> None:
    azure = read_azure(shared_data / "azure/AzureLLMInferenceTrace_conv.csv")
    vidur = read_length_table(shared_data / "vidur/splitwise_conv.csv")
    assert len(azure) == len(vidur) == 19366
    assert azure["arrival_s"].head(3).tolist() == [0.0, 4.314579, 4.541877]
    assert azure[["prompt_len", "output_len"]].iloc[0].tolist() == [374, 44]
    assert azure["arrival_s"].is_monotonic_increasing and azure["source"].iloc[0] == "azure_conv"
    np.testing.assert_allclose(azure["arrival_s"], vidur["arrival_s"], rtol=0, atol=1e-9)
    assert (azure["prompt_len"].to_numpy() == vidur["prompt_len"].to_numpy()).all()


def test_burstgpt_drops_failed_requests_and_counts_them(shared_data: Path) -> None:
    path = shared_data / "burstgpt/BurstGPT_1_first400.csv"
    frame = read_burstgpt(path)
    assert len(frame) == 383 and frame.attrs["num_failed_dropped"] == 17
    assert frame["arrival_s"].head(3).tolist() == [0.0, 40.0, 113.0]  # file seconds 5, 45, 118
    assert frame[["prompt_len", "output_len"]].iloc[0].tolist() == [472, 18]
    assert ((frame["prompt_len"] > 0) & (frame["output_len"] > 0)).all()
    assert len(read_burstgpt(path, drop_failed=False)) == 400
    assert len(read_burstgpt(path, model="GPT-4")) == 77
    assert len(read_burstgpt(shared_data / "burstgpt/BurstGPT_3_first400.csv")) == 399


def test_mooncake_timestamps_are_milliseconds(shared_data: Path) -> None:
    frame = read_mooncake(shared_data / "mooncake/conversation_trace.jsonl")
    assert len(frame) == 12031
    assert frame[["prompt_len", "output_len"]].iloc[0].tolist() == [6758, 500]
    assert frame["arrival_s"].iloc[-1] == pytest.approx(3536.999)
    assert frame["arrival_s"].is_monotonic_increasing


def test_length_tables(shared_data: Path) -> None:
    servingsim = read_length_table(shared_data / "llmservingsim/share-gpt-req100-rate10.tsv")
    assert len(servingsim) == 100
    assert servingsim["arrival_s"].iloc[1] == 0.301012144  # (347938952 - 46926808) ns, no float noise
    stats = read_length_table(shared_data / "sharegpt/sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    assert len(stats) == 30731 and "arrival_s" not in stats.columns
    assert stats[["prompt_len", "output_len"]].iloc[0].tolist() == [74, 918]


def test_synthetic_lengths_are_seeded_and_in_range() -> None:
    uniform = synthetic_lengths(500, seed=3, prompt_range=(8, 64), output_range=(1, 4))
    assert uniform["prompt_len"].between(8, 64).all() and set(uniform["output_len"]) == {1, 2, 3, 4}
    lognormal = synthetic_lengths(500, seed=3, distribution="lognormal", prompt_range=(8, 512))
    assert lognormal["prompt_len"].between(8, 512).all()
    assert lognormal["prompt_len"].median() == pytest.approx(64, rel=0.15)  # the range's geometric mean
    pd.testing.assert_frame_equal(uniform, synthetic_lengths(500, seed=3, prompt_range=(8, 64), output_range=(1, 4)))
    assert not uniform.equals(synthetic_lengths(500, seed=4, prompt_range=(8, 64), output_range=(1, 4)))


# --- arrivals and classes ----------------------------------------------------------------

def gaps(times: np.ndarray) -> np.ndarray:
    return np.diff(times)


def test_poisson_mean_gap_is_one_over_rate() -> None:
    times = arrivals.poisson_arrivals(20000, rate=4.0, seed=0)
    assert times[0] == 0.0 and (gaps(times) >= 0).all()
    assert gaps(times).mean() == pytest.approx(0.25, rel=0.03)
    assert gaps(times).std() / gaps(times).mean() == pytest.approx(1.0, rel=0.05)
    np.testing.assert_array_equal(times, arrivals.gamma_arrivals(20000, 4.0, burstiness=1.0, seed=0))


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_sets_the_coefficient_of_variation(burstiness: float) -> None:
    times = arrivals.gamma_arrivals(20000, rate=2.0, burstiness=burstiness, seed=0)
    assert gaps(times).mean() == pytest.approx(0.5, rel=0.05)
    assert gaps(times).std() / gaps(times).mean() == pytest.approx(burstiness ** -0.5, rel=0.05)


def test_source_arrivals_start_at_zero_and_scale() -> None:
    np.testing.assert_array_equal(arrivals.source_arrivals([5.0, 6.0, 8.0], time_scale=0.5), [0.0, 0.5, 1.5])
    with pytest.raises(ValueError, match="time_scale"):
        arrivals.source_arrivals([0.0], time_scale=0)
    with pytest.raises(ValueError, match="rate"):
        arrivals.poisson_arrivals(3, rate=0.0)


@pytest.mark.parametrize(("num_requests", "ls_fraction", "num_ls"), [(40, 0.2, 8), (7, 0.2, 1), (9, 0.5, 4), (5, 0.0, 0), (5, 1.0, 5)])
def test_assign_classes_exact_counts(num_requests: int, ls_fraction: float, num_ls: int) -> None:
    labels = arrivals.assign_classes(num_requests, ls_fraction, seed=0)
    assert len(labels) == num_requests and (labels == "LS").sum() == num_ls and set(labels) <= {"LS", "BE"}


def test_assign_classes_is_seeded() -> None:
    first = arrivals.assign_classes(100, 0.2, seed=0)
    np.testing.assert_array_equal(first, arrivals.assign_classes(100, 0.2, seed=0))
    assert (first != arrivals.assign_classes(100, 0.2, seed=1)).any()


# --- builder -------------------------------------------------------------------------------

def test_shipped_default_trace_is_rebuilt_byte_for_byte(sharegpt_parts, tmp_path: Path) -> None:
    rebuilt = save_trace(build_trace("sharegpt", sharegpt_parts, **DEFAULT_TRACE_ARGS), tmp_path / "default.parquet")
    assert rebuilt.read_bytes() == (REPO / "traces/sharegpt_default.parquet").read_bytes()
    trace = load_trace(rebuilt)
    assert len(trace) == 200 and (trace["priority_class"] == "LS").sum() == 40
    assert trace["prompt_len"].max() <= 64 and trace["output_len"].max() <= 64
    requests = requests_from_trace(trace)
    assert all(len(request.prompt_ids) == request.prompt_len for request in requests)


def test_cli_builds_identical_files_for_the_same_seed(sharegpt_parts, tmp_path: Path, capsys) -> None:
    def cli(seed: int, name: str) -> bytes:
        build_trace_module.main(["sharegpt", *map(str, sharegpt_parts), "-n", "10", "--arrival", "gamma", "--rate", "2",
                                 "--burstiness", "0.5", "--max-prompt-len", "16", "--seed", str(seed), "-o", str(tmp_path / name)])
        return (tmp_path / name).read_bytes()

    assert cli(0, "a.parquet") == cli(0, "b.parquet")
    assert cli(1, "c.parquet") != cli(0, "a.parquet")
    assert "10 requests (2 LS)" in capsys.readouterr().out


def test_caps_truncate_or_drop_prompts(sharegpt_parts) -> None:
    truncated = build_trace("sharegpt", sharegpt_parts, num_requests=50, arrival="poisson", rate=1.0,
                            max_prompt_len=20, max_output_len=8)
    assert truncated["prompt_len"].max() == 20 and truncated["output_len"].max() == 8
    assert (truncated["prompt_ids"].map(len) == truncated["prompt_len"]).all()
    dropped = build_trace("sharegpt", sharegpt_parts, num_requests=50, arrival="poisson", rate=1.0,
                          max_prompt_len=20, prompt_cap="drop")
    assert len(dropped) == 50 and dropped["prompt_len"].max() <= 20
    frame = pd.DataFrame({"prompt_len": [3, 9], "output_len": [5, 1], "prompt_ids": [[1, 2, 3], list(range(9))]})
    assert cap_lengths(frame, 4, 2)["prompt_ids"].tolist() == [[1, 2, 3], [0, 1, 2, 3]]


def test_source_arrivals_with_time_scale_and_a_prefix(shared_data: Path) -> None:
    trace = build_trace("azure", shared_data / "azure/AzureLLMInferenceTrace_code.csv", num_requests=100,
                        arrival="source", time_scale=0.5)
    assert trace["arrival_s"].head(3).tolist() == [0.0, 0.026, 0.0490945]
    assert trace["request_id"].iloc[-1] == "azure_code-99" and (trace["priority_class"] == "LS").sum() == 20


def test_builder_refuses_impossible_requests(shared_data: Path) -> None:
    stats = shared_data / "sharegpt/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
    with pytest.raises(ValueError, match="no timestamps"):
        build_trace("length_table", stats, num_requests=5)
    with pytest.raises(ValueError, match="needs a rate"):
        build_trace("length_table", stats, num_requests=5, arrival="poisson")
    with pytest.raises(ValueError, match="only 100"):
        build_trace("length_table", shared_data / "llmservingsim/share-gpt-req100-rate10.tsv", num_requests=101)
    sampled = build_trace("length_table", stats, num_requests=5, arrival="poisson", rate=1.0, seed=2)
    assert sampled["request_id"].tolist() != [f"{stats.stem}-{row}" for row in range(5)]  # a seeded sample


def test_classes_can_come_from_the_source(tmp_path: Path) -> None:
    path = tmp_path / "lengths.csv"
    path.write_text("prompt_len,output_len,arrival_s,priority_class\n4,2,0.0,BE\n5,3,1.5,LS\n")
    trace = build_trace("length_table", path, ls_fraction=None)
    assert trace["priority_class"].tolist() == ["BE", "LS"] and trace["priority"].tolist() == [1, 0]


def test_cli_help_exits_cleanly(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_trace_module.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--burstiness" in capsys.readouterr().out
