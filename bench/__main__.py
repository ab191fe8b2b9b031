"""``python -m bench`` (``make bench``): every ``bench/bench_*.py``, one table.

Each module has ``run() -> list[dict]`` returning rows
``{metric, value, unit, baseline, ratio, goal, ok}``; a module may accept
``run(quick=True)`` for smaller sizes. A module that fails to import or to run yields
one error row (``ok: false``) and the run goes on; the exit status is non-zero when any
row is not ok. The rows are printed as one table under a header naming the machine
(CPU model, cores, Python) and written to ``bench/results.json`` as a plain list of
row objects; the machine goes to ``bench/machine.json`` beside it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KEYS = ("metric", "value", "unit", "baseline", "ratio", "goal", "ok")


def discover(directory: Path = HERE) -> list[str]:
    """Benchmark module names (``bench_can`` ...) found by glob, sorted."""
    return sorted(p.stem for p in directory.glob("bench_*.py"))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal:"))
        mem = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        mem = "?"
    sched = getattr(os, "sched_getaffinity", None)
    cores = len(sched(0)) if sched is not None else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "memory": mem,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def normalise(row: dict[str, Any], module: str) -> dict[str, Any]:
    """Every key present, nothing else; ``ok`` a bool; the metric named."""
    out = {k: row.get(k) for k in KEYS}
    if not out["metric"]:
        out["metric"] = f"{module}.?"
    out["ok"] = bool(out["ok"])
    return out


def error_row(module: str, exc: BaseException) -> dict[str, Any]:
    msg = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
    return {"metric": f"{module}.error", "value": msg[:200], "unit": None, "baseline": None,
            "ratio": None, "goal": "runs", "ok": False}


def run_module(name: str, *, quick: bool, package: str = "bench",
               log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(f"{package}.{name}")
        fn = mod.run
        kwargs = {"quick": quick} if "quick" in inspect.signature(fn).parameters else {}
        rows = fn(**kwargs)
        if not isinstance(rows, list):
            raise TypeError(f"run() returned {type(rows).__name__}, not a list of rows")
        out = [normalise(r, name) for r in rows]
    except Exception as exc:  # one broken benchmark must not stop the table
        traceback.print_exc(file=sys.stderr)
        out = [error_row(name, exc)]
    log(f"# {name}: {len(out)} rows in {time.perf_counter() - t0:.1f} s")
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "ok" if v else "FAIL"
    if isinstance(v, float):
        if v != v:  # NaN
            return "nan"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], info: dict[str, Any]) -> str:
    head = (f"# machine: {info['cpu']}, {info['cores']} cores, {info['memory']} RAM, "
            f"{info['implementation']} {info['python']}, {info['os']}, {info['date']}")
    cells = [list(KEYS)] + [[_cell(r[k]) for k in KEYS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(KEYS))]
    right = {1, 3, 4}  # value, baseline, ratio
    lines = [head]
    for n, c in enumerate(cells):
        lines.append("  ".join(x.rjust(w) if i in right else x.ljust(w)
                               for i, (x, w) in enumerate(zip(c, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, directory: Path = HERE,
         package: str = "bench") -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this module (bench_can or can); repeatable")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--out", type=Path, default=directory / "results.json",
                   help="where the rows go (default bench/results.json)")
    args = p.parse_args(argv)
    names = discover(directory)
    if args.only:
        want = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only}
        unknown = want - set(names)
        if unknown:
            print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; "
                  f"known: {', '.join(names)}", file=sys.stderr)
            return 2
        names = [n for n in names if n in want]
    info = machine()
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += run_module(name, quick=args.quick, package=package,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(rows, info))
    args.out.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    args.out.with_name("machine.json").write_text(json.dumps(info, indent=1) + "\n")
    bad = [r["metric"] for r in rows if not r["ok"]]
    if bad:
        print(f"# not ok: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
