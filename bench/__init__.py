"""Benchmarks: ``python -m bench`` runs every ``bench_*.py`` and prints one table."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any


def row(metric: str, value: Any, unit: str | None, baseline: Any = None,
        goal: str | None = None, ok: bool = True) -> dict[str, Any]:
    """One table row; ``ratio`` is value / baseline when both are numbers."""
    ratio = None
    if isinstance(value, int | float) and isinstance(baseline, int | float) and baseline:
        ratio = round(value / baseline, 2)
    return {"metric": metric, "value": value, "unit": unit, "baseline": baseline,
            "ratio": ratio, "goal": goal, "ok": ok}


def need_mosquitto() -> None:
    """Benchmarks against the real broker: fail clearly when it is not installed."""
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        raise RuntimeError("mosquitto is not installed (make deps)")
    if shutil.which("mosquitto") is None:
        os.environ["PATH"] += ":/usr/sbin"


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """End a daemon the bench started: SIGTERM, 15 s for a graceful stop, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
