"""Plot-ready tables from what a run recorded (DESIGN.md, "Tables").

Definitions follow vLLM bench, counted from the TRACE arrival time (not the moment the
harness submitted the request, so lateness caused by a long engine step is the engine's):
TTFT = first token - arrival; e2e (turnaround) = last token - arrival;
TPOT = (e2e - TTFT) / (generated - 1); ITL = gaps between consecutive tokens.
Latency metrics are given for finished requests only (NaN for rejected, failed and
unfinished ones), so every percentile is over completed requests, as vLLM bench does.
Percentiles are numpy's default linear interpolation.
SLO attainment is the share of the requests that HAVE an SLO (their class sets at least one)
meeting every one of them; goodput counts every finished request that misses none of its
class's SLOs, per second (a class without SLOs: every finished request).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.recorder import Recorder, RequestEvents
from qllm.events import TIMELINE_GAUGES
from qllm.request import BE, LS, PRIORITY_CLASSES, Request

FINISHED, REJECTED, FAILED, UNFINISHED = "finished", "rejected", "failed", "unfinished"
UNFINISHED_ERROR = "not finished when the run ended"
SLO_METRICS = ("ttft_s", "tpot_s", "e2e_s")
LATENCY_METRICS = ("ttft_s", "tpot_s", "itl_s", "e2e_s")
REQUESTS_COLUMNS = [
    "run_id", "engine", "request_id", "priority_class", "priority", "arrival_s",
    "first_scheduled_s", "first_token_s", "finish_s", "prompt_len", "output_len",
    "generated_len", "ttft_s", "tpot_s", "e2e_s", "preemptions", "suspended_s", "max_wait_s",
    "slo_ttft_s", "has_slo", "slo_met", "status", "error",
]  # fmt: skip
_DERIVED = ("run_id", "engine", "ttft_s", "tpot_s", "e2e_s", "max_wait_s", "slo_ttft_s", "has_slo", "slo_met")
_ROW_COLUMNS = [c for c in REQUESTS_COLUMNS if c not in _DERIVED] + ["last_token_s", "token_ids"]
TIMELINE_COLUMNS = [
    "run_id", "engine", "t_start_s", "t_end_s", "duration_s", "kind", "layer", "expert",
    "batch_size", "num_tokens", "request_ids", "is_resume", "num_ls", "num_be",
    *TIMELINE_GAUGES,
]  # fmt: skip
GAUGES = TIMELINE_GAUGES  # the engine's state after a quantum (qllm.events.EngineStats, recorded on each Quantum)


def _or_nan(x: float | None) -> float:
    return np.nan if x is None else float(x)


def suspended_s(events: RequestEvents) -> float:
    """Total time between each preemption and its resume; an unresumed one counts until finish."""
    preempted, resumed = sorted(events.preempted_s), sorted(events.resumed_s)
    total = 0.0
    for i, t_preempted in enumerate(preempted):
        t_back = resumed[i] if i < len(resumed) else events.finish_s
        if t_back is None:  # suspended when the run ended: length unknown
            return np.nan
        total += t_back - t_preempted
    return total


def max_wait_s(requests: list[Request], recorder: Recorder) -> dict[str, float]:
    """Each finished request's longest stretch between its arrival and its finish with no quantum
    computing it: queueing and suspension alike. Bounding it is what BE aging is for. Unknown
    (absent) for an engine that reports no quanta: a remote server's client cannot see them."""
    if not recorder.quanta:
        return {}
    busy: dict[str, list[tuple[float, float]]] = {}
    for q in recorder.quanta:
        for request_id in q.request_ids:
            busy.setdefault(request_id, []).append((q.t_start_s, q.t_end_s))
    waits = {}
    for request in requests:
        t_free, longest = request.arrival_s, 0.0
        for t_start, t_end in busy.get(request.request_id, []):
            longest, t_free = max(longest, t_start - t_free), t_end
        waits[request.request_id] = longest
    return waits


def _status(events: RequestEvents) -> tuple[str, str | None]:
    if events.rejected_reason is not None:
        return REJECTED, events.rejected_reason
    if events.failed_reason is not None:
        return FAILED, events.failed_reason
    if events.finish_s is not None:
        return FINISHED, None
    return UNFINISHED, UNFINISHED_ERROR


def _request_row(request: Request, events: RequestEvents) -> dict:
    """The recorded facts of one request; metrics are derived from them column-wise."""
    status, error = _status(events)
    tokens_s = events.token_s
    return {
        "request_id": request.request_id,
        "priority_class": request.priority_class,
        "priority": request.priority,
        "arrival_s": request.arrival_s,
        "first_scheduled_s": _or_nan(events.first_scheduled_s),
        "first_token_s": tokens_s[0] if tokens_s else np.nan,
        "last_token_s": tokens_s[-1] if tokens_s else np.nan,
        "finish_s": _or_nan(events.finish_s),
        "prompt_len": request.prompt_len,
        "output_len": request.output_len,
        "generated_len": len(tokens_s),
        "preemptions": len(events.preempted_s),
        "suspended_s": suspended_s(events),
        "status": status,
        "error": error,
        "token_ids": list(events.token_ids),
    }


def _has_slo(df: pd.DataFrame, slo: dict) -> pd.Series:
    """The request's class sets at least one SLO."""
    classes_with_slo = {c for c, limits in slo.items() if any(v is not None for v in (limits or {}).values())}
    return df["priority_class"].isin(classes_with_slo)


def _slo_met(df: pd.DataFrame, slo: dict) -> pd.Series:
    """Finished and every SLO of the request's class met (a class without SLOs: finished)."""
    met = df["status"] == FINISHED
    for metric in SLO_METRICS:
        limit = df["priority_class"].map(lambda c: (slo.get(c) or {}).get(metric)).astype(float)
        # No limit, or no value to judge (TPOT of a one-token request), is not a miss.
        met &= limit.isna() | df[metric].isna() | (df[metric] <= limit)
    return met


def requests_table(
    requests: list[Request],
    recorder: Recorder,
    slo: dict,
    run_id: str,
    engine: str,
    with_token_ids: bool = False,
) -> pd.DataFrame:
    """One row per trace request, in trace order; none is dropped (see module docstring)."""
    rows = [_request_row(r, recorder.requests.get(r.request_id, RequestEvents())) for r in requests]
    df = pd.DataFrame(rows, columns=_ROW_COLUMNS)
    df.insert(0, "run_id", run_id)
    df.insert(1, "engine", engine)
    finished = df["status"] == FINISHED
    df["ttft_s"] = (df["first_token_s"] - df["arrival_s"]).where(finished)
    df["e2e_s"] = (df["last_token_s"] - df["arrival_s"]).where(finished)
    decode_tokens = (df["generated_len"] - 1).where(df["generated_len"] > 1)
    df["tpot_s"] = (df["e2e_s"] - df["ttft_s"]) / decode_tokens
    df["max_wait_s"] = df["request_id"].map(max_wait_s(requests, recorder)).where(finished)
    df["slo_ttft_s"] = df["priority_class"].map(lambda c: (slo.get(c) or {}).get("ttft_s")).astype(float)
    df["has_slo"] = _has_slo(df, slo).astype(bool)
    df["slo_met"] = _slo_met(df, slo).astype(bool)
    df["error"] = df["error"].astype("str")
    float_cols = ["first_scheduled_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "suspended_s",
                  "max_wait_s"]  # fmt: skip
    df[float_cols] = df[float_cols].astype(float)
    return df[REQUESTS_COLUMNS + (["token_ids"] if with_token_ids else [])]


def itl_s(recorder: Recorder) -> dict[str, list[float]]:
    """Inter-token latencies of every recorded request: the input `summary_table` pools."""
    return {rid: np.diff(ev.token_s).tolist() for rid, ev in recorder.requests.items()}


def _stats(values, name: str) -> dict:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {f"{name}_{s}": np.nan for s in ("mean", "p50", "p90", "p99")}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {f"{name}_mean": values.mean(), f"{name}_p50": p50, f"{name}_p90": p90, f"{name}_p99": p99}


def _class_row(df: pd.DataFrame, itl_by_request: dict[str, list[float]], makespan_s: float) -> dict:
    finished = df[df["status"] == FINISHED]
    itl = [gap for rid in finished["request_id"] for gap in itl_by_request.get(rid, [])]
    row = {
        "n": len(df),
        "n_finished": len(finished),
        "n_rejected": int((df["status"] == REJECTED).sum()),
        "n_failed": int((df["status"] == FAILED).sum()),
        "n_unfinished": int((df["status"] == UNFINISHED).sum()),
    }
    for metric in LATENCY_METRICS:
        row |= _stats(itl if metric == "itl_s" else finished[metric], metric)
    row["max_wait_s"] = finished["max_wait_s"].max()  # the starvation bound actually seen
    with_slo = df[df["has_slo"]]
    row["slo_attainment"] = with_slo["slo_met"].mean() if len(with_slo) else np.nan  # only requests with an SLO
    row["goodput_rps"] = df["slo_met"].sum() / makespan_s
    row["throughput_tok_s"] = finished["generated_len"].sum() / makespan_s
    row["throughput_rps"] = len(finished) / makespan_s
    row["makespan_s"] = makespan_s
    return row


def makespan_s(requests_df: pd.DataFrame) -> float:
    """Last finish of a finished request - first trace arrival, over the whole run."""
    finish = requests_df.loc[requests_df["status"] == FINISHED, "finish_s"]
    if finish.empty:
        return np.nan
    return float(finish.max() - requests_df["arrival_s"].min())


def summary_table(
    requests_df: pd.DataFrame, itl_by_request: dict[str, list[float]] | Recorder, run_params: dict
) -> pd.DataFrame:
    """One row per priority class present (LS, BE, then others) plus `all`.

    `itl_by_request` is `itl_s(recorder)` (or the recorder itself); ITL is pooled over the
    class's finished requests. `run_params` (engine, model, trace, rate, seed, ...) become
    the leading columns.
    """
    peaks = {f"peak_{gauge}": np.nan for gauge in GAUGES}
    if isinstance(itl_by_request, Recorder):
        peaks = peak_gauges(itl_by_request)
        itl_by_request = itl_s(itl_by_request)
    span_s = makespan_s(requests_df)
    present = list(requests_df["priority_class"].unique())
    classes = [c for c in PRIORITY_CLASSES if c in present] + sorted(set(present) - set(PRIORITY_CLASSES))
    rows = []
    for name in [*classes, "all"]:
        df = requests_df if name == "all" else requests_df[requests_df["priority_class"] == name]
        rows.append({**run_params, "priority_class": name, **_class_row(df, itl_by_request, span_s), **peaks})
    return pd.DataFrame(rows)


def peak_gauges(recorder: Recorder) -> dict[str, float]:
    """The run's peak of each engine gauge (`peak_kv_reserved_bytes`, ...); NaN where the engine reports none."""
    peaks = {}
    for gauge in GAUGES:
        values = [getattr(q, gauge) for q in recorder.quanta if getattr(q, gauge) is not None]
        peaks[f"peak_{gauge}"] = max(values) if values else np.nan
    return peaks


def timeline_table(
    recorder: Recorder, run_id: str, engine: str, class_by_request: dict[str, str] | None = None
) -> pd.DataFrame:
    """One row per executed quantum; num_ls/num_be count the batch's classes (NA without a mapping)."""
    classes = class_by_request or {}
    rows = []
    for q in recorder.quanta:
        batch_classes = [classes.get(rid) for rid in q.request_ids]
        rows.append({
            "run_id": run_id, "engine": engine, "t_start_s": q.t_start_s, "t_end_s": q.t_end_s,
            "duration_s": q.t_end_s - q.t_start_s, "kind": q.kind, "layer": q.layer, "expert": q.expert,
            "batch_size": len(q.request_ids), "num_tokens": q.num_tokens,
            "request_ids": list(q.request_ids), "is_resume": q.is_resume,
            "num_ls": batch_classes.count(LS) if class_by_request else None,
            "num_be": batch_classes.count(BE) if class_by_request else None,
            **{gauge: getattr(q, gauge) for gauge in GAUGES},
        })  # fmt: skip
    df = pd.DataFrame(rows, columns=TIMELINE_COLUMNS)
    for col in ("layer", "expert", "batch_size", "num_tokens", "num_ls", "num_be", *GAUGES):
        df[col] = df[col].astype("Int64")  # nullable: None means "whole pass" / "unknown"
    return df
