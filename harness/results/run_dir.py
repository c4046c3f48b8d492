"""A run's directory: tables, resolved config, manifest and the completion marker.

Every file is written atomically (a temp file in the same directory, then `os.replace`), and
`DONE` is written last, so a run that crashed half way never looks complete and a sweep run
again can skip exactly the points that finished (`is_complete`).

Layout of `results/<run dir>/`:
  manifest.json            where and how the run ran (written at its start, `write_manifest`)
  config.yaml              the resolved config (Hydra's own .hydra/config.yaml is unresolved)
  <table>.parquet, .csv    requests, summary, timeline (`write_tables`); CSV list columns are JSON
  DONE                     the completion marker (`mark_complete`)
  report.html              one page of all of it, written after DONE (harness.results.gather, harness.results.report)
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness.results.atomic import atomic_write, write_text
from qllm.machine import cpu_name

DONE_FILE = "DONE"
# Reported even when the project is not installed (its own dependencies are read otherwise).
CORE_PACKAGES = ("torch", "transformers", "pandas", "pyarrow", "numpy", "hydra-core", "omegaconf")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _is_list_column(col: pd.Series) -> bool:
    return col.dtype == object and any(isinstance(v, (list, tuple, np.ndarray)) for v in col)


def _list_to_json(v) -> str | None:
    if isinstance(v, (list, tuple, np.ndarray)):
        return json.dumps([x.item() if isinstance(x, np.generic) else x for x in v])
    return None


def write_tables(run_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Write each table as `<name>.parquet` and `<name>.csv` (list columns as JSON strings)."""
    run_dir = Path(run_dir)
    for name, df in tables.items():
        atomic_write(run_dir / f"{name}.parquet", lambda tmp: df.to_parquet(tmp, index=False))
        csv_df = df.copy()
        for col in csv_df.columns:
            if _is_list_column(csv_df[col]):
                csv_df[col] = csv_df[col].map(_list_to_json)
        atomic_write(run_dir / f"{name}.csv", lambda tmp: csv_df.to_csv(tmp, index=False))


def read_run(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Every `<name>.parquet` of a run directory, by name; list columns come back as lists."""
    tables = {}
    for path in sorted(Path(run_dir).glob("*.parquet")):
        df = pd.read_parquet(path)
        for col in df.columns:
            if _is_list_column(df[col]):  # pyarrow hands lists back as numpy arrays
                df[col] = df[col].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
        tables[path.stem] = df
    return tables


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _package_versions() -> dict[str, str | None]:
    """Versions of the project's declared dependencies (plus the core ones), by distribution."""
    try:
        declared = importlib.metadata.requires("qllm-bench") or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    names = [re.match(r"[A-Za-z0-9_.\-]+", r).group(0) for r in declared if "extra ==" not in r]
    versions = {}
    for name in dict.fromkeys([*CORE_PACKAGES, *names, "qllm-bench"]):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _torch_info() -> dict:
    import torch  # imported here: the manifest is the only part of this module that needs it

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "torch_num_threads": torch.get_num_threads()}


def write_manifest(run_dir: Path, extra: dict | None = None) -> dict:
    """Record where and how the run ran; call it when the run starts (it clears a stale DONE)."""
    run_dir = Path(run_dir)
    (run_dir / DONE_FILE).unlink(missing_ok=True)
    status = _git("status", "--porcelain", "--untracked-files=no")
    manifest = {
        "start_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "packages": _package_versions(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        **_torch_info(),
        "hostname": socket.gethostname(),
        **(extra or {}),
    }
    write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def write_config(run_dir: Path, cfg) -> None:
    """The config with every interpolation resolved, as `config.yaml` (a DictConfig or a dict)."""
    from omegaconf import OmegaConf

    cfg = cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg)
    write_text(Path(run_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def mark_complete(run_dir: Path) -> None:
    """Write the completion marker; call it after every other file of the run is written."""
    write_text(Path(run_dir) / DONE_FILE, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds") + "\n")


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / DONE_FILE).is_file()
