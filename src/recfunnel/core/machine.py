"""Is the machine quiet? A speed measured beside other work is not the machine's speed.

Every benchmark and every ``recfunnel reproduce`` entry that publishes a speed asks this
first, records the answer with its figures, and refuses a busy machine unless told
``--busy-ok`` (the figure is then marked as taken on a busy machine).
"""

from __future__ import annotations

import os
import platform
from typing import Any

QUIET_LOAD = 0.5
"""A 1-minute load average per core below this: nothing else is running much."""


def machine_load() -> dict[str, Any]:
    """The load averages, the cores, the CPU and whether the machine counts as quiet."""
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count() or 1
    return {
        "load_1m": one,
        "load_5m": five,
        "load_15m": fifteen,
        "cores": cores,
        "cpu": cpu_name(),
        "quiet": one / cores < QUIET_LOAD,
    }


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def quiet_machine() -> tuple[bool, str]:
    """(quiet?, a line saying the load) for messages and reports."""
    m = machine_load()
    state = "quiet" if m["quiet"] else "busy: other work is running"
    return m["quiet"], f"load average {m['load_1m']:.2f} on {m['cores']} cores ({state})"


def describe(m: dict[str, Any]) -> str:
    """One line for a benchmark's output: the machine and whether it was quiet."""
    state = "quiet" if m["quiet"] else "BUSY: these speeds are not the machine's"
    return f"machine: {m['cores']} cores of {m['cpu']}, load {m['load_1m']:.2f} ({state})"


def require_quiet(busy_ok: bool) -> dict[str, Any]:
    """The machine's load, or SystemExit on a busy machine unless ``busy_ok``."""
    m = machine_load()
    if not m["quiet"] and not busy_ok:
        raise SystemExit(
            f"the machine is busy (load average {m['load_1m']:.2f} on {m['cores']} cores): "
            "speeds taken now would not be the machine's; stop the other work, or pass "
            "--busy-ok to measure anyway (the output then says busy)"
        )
    return m
