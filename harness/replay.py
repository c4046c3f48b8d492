"""Open-loop replay: submit each request at its arrival time, step the engine in between."""

from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from harness.engines import Engine
from harness.recorder import Recorder
from qllm.request import DEFAULT_PRIORITY, Request


def requests_from_trace(trace: pd.DataFrame) -> list[Request]:
    """Turn validated trace rows into requests, in arrival order."""
    has_ids = "prompt_ids" in trace.columns
    has_priority = "priority" in trace.columns
    requests = []
    for row in trace.itertuples(index=False):
        ids = getattr(row, "prompt_ids") if has_ids else None
        requests.append(
            Request(
                request_id=str(row.request_id),
                arrival_s=float(row.arrival_s),
                prompt_len=int(row.prompt_len),
                output_len=int(row.output_len),
                priority_class=str(row.priority_class),
                priority=int(row.priority) if has_priority else DEFAULT_PRIORITY[row.priority_class],
                prompt_ids=tuple(int(i) for i in ids) if ids is not None and len(ids) else None,
            )
        )
    return requests


def replay(requests: list[Request], engine: Engine, recorder: Recorder, progress: bool = True) -> None:
    """Run `requests` against `engine` in real time until every one has finished or been rejected.

    Before each `engine.step()` every request whose arrival time has passed is submitted, so the
    engine sees arrivals only at its own checkpoints, as a real server would. Metrics count from
    the trace's arrival time, not from submission: lateness caused by a long step is the engine's.
    """
    clock = recorder.clock
    pending = sorted(requests, key=lambda r: r.arrival_s)
    next_index = 0
    with tqdm(total=len(pending), desc=f"replay {engine.name}", unit="req", disable=not progress) as bar:
        clock.start_replay(r.arrival_s for r in pending)  # arrivals count from here: the bar's set-up is not the engine's
        while next_index < len(pending) or not engine.idle():
            while next_index < len(pending) and pending[next_index].arrival_s <= clock.now():
                engine.submit(pending[next_index])
                next_index += 1
            if engine.idle():
                if next_index < len(pending):
                    clock.sleep_until(pending[next_index].arrival_s)
            else:
                engine.step()
            bar.update(recorder.num_done - bar.n)
