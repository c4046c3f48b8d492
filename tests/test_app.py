"""The Hydra app end to end."""

from __future__ import annotations

from harness.results.metrics import REQUESTS_COLUMNS, TIMELINE_COLUMNS
from harness.results.run_dir import is_complete
from tests.helpers import ENGINES

SUMMARY_COLUMNS = [
    f"{metric}_{stat}" for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s") for stat in ("mean", "p50", "p90", "p99")
] + ["n", "slo_attainment", "goodput_rps", "throughput_tok_s", "throughput_rps", "makespan_s", "priority_class"]


def test_replay_through_hf_generate_writes_every_table_with_one_row_per_request(run_app, tmp_path):
    tables = run_app("engine=[hf_generate]", "trace.num_requests=6", "trace.ls_fraction=0.5", "trace.max_output_len=4",
                     "record_token_ids=true")  # fmt: skip
    requests = tables["requests"]
    assert list(requests.columns) == REQUESTS_COLUMNS + ["token_ids"]
    assert len(requests) == 6 and requests["request_id"].is_unique
    assert (requests["status"] == "finished").all()
    assert (requests["generated_len"] == requests["output_len"]).all()
    assert [len(ids) for ids in requests["token_ids"]] == list(requests["output_len"])
    assert set(SUMMARY_COLUMNS) <= set(tables["summary"].columns)
    assert set(tables["summary"]["priority_class"]) == {"LS", "BE", "all"}
    assert list(tables["timeline"].columns) == TIMELINE_COLUMNS
    for name in ("requests", "summary", "timeline"):
        assert (tmp_path / f"{name}.parquet").exists() and (tmp_path / f"{name}.csv").exists()
    assert (tmp_path / "manifest.json").exists() and (tmp_path / "config.yaml").exists()
    assert is_complete(tmp_path)


def test_every_engine_serves_the_same_trace_with_identical_tokens(run_app):
    engines = ",".join(ENGINES)
    requests = run_app(f"engine=[{engines}]", "trace.num_requests=5", "trace.max_output_len=3", "record_token_ids=true")[
        "requests"
    ]
    tokens = requests.pivot(index="request_id", columns="engine", values="token_ids")
    assert set(tokens.columns) == set(ENGINES)
    for request_id, row in tokens.iterrows():
        outputs = {engine: [int(t) for t in ids] for engine, ids in row.items()}
        assert all(ids == outputs["hf_generate"] for ids in outputs.values()), (request_id, outputs)
