"""The machine a measurement was made on, as a run's manifest and a profile record it."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """This machine's CPU model, as /proc/cpuinfo names it (else the platform's word)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # no /proc (macOS, Windows)
        pass
    return platform.processor() or platform.machine()
