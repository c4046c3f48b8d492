"""Build a trace file from real or synthetic workload data: lengths, arrivals, LS/BE classes.

    python -m harness.traces.build_trace sharegpt data/sharegpt/part*.json --num-requests 40 \\
        --arrival poisson --rate 4 --max-prompt-len 64 --max-output-len 32 -o traces/x.parquet

One seed drives every random choice (ShareGPT shuffle, row sample, arrivals, classes), each
from its own numpy stream, so the same arguments give the same file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from harness.traces import trace_sources
from harness.traces.reshape import ARRIVAL_PROCESSES, PROMPT_CAPS, reshape_trace
from harness.traces.trace_schema import save_trace, validate_trace
from qllm.errors import exit_with_usage_error

SOURCES = ("sharegpt", "azure", "burstgpt", "mooncake", "length_table", "synthetic")


def build_trace(
    source: str,
    paths: str | os.PathLike | Sequence[str | os.PathLike] = (),
    *,
    num_requests: int | None = None,
    seed: int = 0,
    arrival: str = "source",
    rate: float | None = None,
    burstiness: float = 1.0,
    time_scale: float = 1.0,
    ls_fraction: float | None = 0.2,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
    prompt_cap: str = "truncate",
    source_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """A validated trace of `num_requests` requests (None: every row the source keeps).

    arrival: `source` keeps the data's own timestamps times `time_scale`; `poisson` and `gamma`
    generate arrivals at `rate` req/s (gamma with `burstiness`, see harness.traces.arrivals).
    ls_fraction: share of LS requests, exactly rounded; None keeps the source's priority_class.
    max_prompt_len / max_output_len: caps for small runs; output_len is clipped, prompts are
    truncated (with their prompt_ids) or dropped, as `prompt_cap` says.
    source_options: extra keyword arguments for the reader (see harness.traces.trace_sources).
    """
    # Readers may stop early only when no later step can drop rows.
    read_limit = num_requests if max_prompt_len is None or prompt_cap == "truncate" else None
    frame = read_source(source, paths, num_requests=read_limit, seed=seed, options=source_options or {})
    frame = reshape_trace(
        frame, num_requests=num_requests, max_prompt_len=max_prompt_len, max_output_len=max_output_len,
        prompt_cap=prompt_cap, arrival=arrival, rate=rate, burstiness=burstiness, time_scale=time_scale,
        ls_fraction=ls_fraction, seed=seed, is_shuffled=source in ("sharegpt", "synthetic"),
    )
    return validate_trace(frame, source=f"trace built from {source}")


def read_source(
    source: str, paths: str | os.PathLike | Sequence[str | os.PathLike], *,
    num_requests: int | None, seed: int, options: dict[str, Any],
) -> pd.DataFrame:
    """Rows of one source (see SOURCES), read by its harness.traces.trace_sources reader."""
    path_list = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if source == "sharegpt":
        return trace_sources.read_sharegpt(path_list, seed=seed, num_requests=num_requests, **options)
    if source == "synthetic":
        if num_requests is None:
            raise ValueError("the synthetic source needs num_requests")
        return trace_sources.synthetic_lengths(num_requests, seed=seed, **options)
    readers = {
        "azure": trace_sources.read_azure,
        "burstgpt": trace_sources.read_burstgpt,
        "mooncake": trace_sources.read_mooncake,
        "length_table": trace_sources.read_length_table,
    }
    if source not in readers:
        raise ValueError(f"unknown trace source {source!r}; expected one of {SOURCES}")
    if len(path_list) != 1:
        raise ValueError(f"source {source!r} reads exactly one file, got {len(path_list)}")
    return readers[source](path_list[0], **options)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.traces.build_trace",
        description="Build a request trace (Parquet, CSV or JSONL by the output's suffix) from workload data. "
                    "The same arguments give a byte-identical file.",
    )
    parser.add_argument("source", choices=SOURCES, help="kind of input data")
    parser.add_argument("paths", nargs="*", help="input file(s); ShareGPT parts are concatenated in the order given")
    parser.add_argument("-o", "--output", required=True, help="trace file to write (.parquet, .csv or .jsonl)")
    parser.add_argument("-n", "--num-requests", type=int, help="requests in the trace (default: all the source keeps)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--arrival", choices=ARRIVAL_PROCESSES, default="source",
                        help="source: the data's timestamps; poisson/gamma: generated at --rate (default source)")
    parser.add_argument("--rate", type=float, help="requests per second for poisson/gamma arrivals")
    parser.add_argument("--burstiness", type=float, default=1.0,
                        help="gamma shape; 1 = Poisson, < 1 burstier, > 1 smoother (default 1)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiplies the source's timestamps; 0.5 replays twice as fast (default 1)")
    parser.add_argument("--ls-fraction", type=float, default=0.2,
                        help="share of latency-sensitive (LS) requests, exactly rounded (default 0.2)")
    parser.add_argument("--classes-from-source", action="store_true",
                        help="keep the source's priority_class column instead of --ls-fraction")
    parser.add_argument("--max-prompt-len", type=int, help="cap on prompt tokens (see --prompt-cap)")
    parser.add_argument("--max-output-len", type=int, help="cap on output tokens (longer outputs are clipped)")
    parser.add_argument("--prompt-cap", choices=PROMPT_CAPS, default="truncate",
                        help="what a prompt over --max-prompt-len gets: truncate (with its ids) or drop")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="reader option, VALUE as JSON or text, e.g. model=GPT-4, max_total_len=4096, "
                             "prompt_range=[8,64], distribution=lognormal (repeatable)")
    return parser.parse_args(argv)


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        trace = build_trace(
            args.source, args.paths, num_requests=args.num_requests, seed=args.seed, arrival=args.arrival,
            rate=args.rate, burstiness=args.burstiness, time_scale=args.time_scale,
            ls_fraction=None if args.classes_from_source else args.ls_fraction,
            max_prompt_len=args.max_prompt_len, max_output_len=args.max_output_len, prompt_cap=args.prompt_cap,
            source_options=_parse_options(args.option),
        )
        path = save_trace(trace, args.output)
    except (OSError, ValueError, TypeError) as error:  # bad input or arguments: a message, not a traceback
        exit_with_usage_error("build_trace", str(error))
    num_ls = int((trace["priority_class"] == "LS").sum())
    print(f"{path}: {len(trace)} requests ({num_ls} LS) over {trace['arrival_s'].iloc[-1]:.3f} s; "
          f"prompt_len mean {trace['prompt_len'].mean():.1f}, output_len mean {trace['output_len'].mean():.1f}")


if __name__ == "__main__":
    main()
