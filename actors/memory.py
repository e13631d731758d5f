"""A process's memory as Linux counts it: resident now and its peak, the peak resettable (so that a
benchmark can read the peak of one operation). Linux only; elsewhere the numbers are NaN."""

from __future__ import annotations

import math
from contextlib import suppress
from pathlib import Path

STATUS = Path("/proc/self/status")


def process_memory_mib(reset_peak: bool = False) -> dict[str, float]:
    """{"rss": resident MiB, "peak": peak resident MiB since start or the last reset}; `reset_peak`:
    then start a new peak from here (writing 5 to /proc/self/clear_refs)."""
    found = {"rss": math.nan, "peak": math.nan}
    with suppress(OSError):
        for line in STATUS.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) / 1024
        if reset_peak:
            Path("/proc/self/clear_refs").write_text("5")
    return found
