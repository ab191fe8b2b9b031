"""``python -m bench``: one table and bench/results.json from every bench_*.py module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import KEYS, discover, format_table, machine, main

FAKE = '''
def run(quick=False):
    n = 10 if quick else 1000
    return [
        {"metric": "fake.rate", "value": 123456.7, "unit": "ops/s", "baseline": 100000.0,
         "ratio": 1.23, "goal": ">= 50,000/s", "ok": True},
        {"metric": "fake.size", "value": n, "unit": "items", "ok": True},
    ]
'''
SLOW = '''
def run():
    return [{"metric": "slow.p99", "value": 31.5, "unit": "ms", "baseline": 2.0,
             "ratio": 15.7, "goal": "<= 20 ms", "ok": False}]
'''


@pytest.fixture
def fake_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bench_fake.py").write_text(FAKE)
    (pkg / "bench_slow.py").write_text(SLOW)
    (pkg / "bench_broken.py").write_text("import no_such_module_here\n")
    (pkg / "bench_raises.py").write_text("def run():\n    raise RuntimeError('boom')\n")
    (pkg / "helper.py").write_text("raise SystemExit('not a benchmark')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return pkg


def test_every_module_runs_and_errors_become_rows(
    fake_pkg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main([], directory=fake_pkg, package="fakebench")
    out = capsys.readouterr().out
    assert rc == 1  # a broken module and a missed goal: non-zero at the end
    rows = json.loads((fake_pkg / "results.json").read_text())
    assert isinstance(rows, list)
    assert all(list(r) == list(KEYS) for r in rows)
    by = {r["metric"]: r for r in rows}
    # modules in glob order, the non-benchmark helper never imported
    assert list(by) == ["bench_broken.error", "fake.rate", "fake.size", "bench_raises.error",
                        "slow.p99"]
    assert "no_such_module_here" in by["bench_broken.error"]["value"]
    assert "boom" in by["bench_raises.error"]["value"]
    assert by["bench_raises.error"]["ok"] is False
    assert by["fake.size"]["value"] == 1000 and by["fake.size"]["baseline"] is None
    assert by["fake.rate"]["ok"] is True and by["slow.p99"]["ok"] is False
    # the table: machine header, one header row, one line per row, same metrics
    lines = out.strip().splitlines()
    assert lines[0].startswith("# machine: ") and "cores" in lines[0]
    assert sys.version.split()[0] in lines[0]
    assert lines[1].split() == list(KEYS)
    body = lines[3:]
    assert [ln.split()[0] for ln in body] == list(by)
    assert "123,457" in out and "FAIL" in out
    info = json.loads((fake_pkg / "machine.json").read_text())
    assert info["cores"] >= 1 and info["python"] == sys.version.split()[0]


def test_only_and_quick(fake_pkg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "fake", "--quick"], directory=fake_pkg, package="fakebench") == 0
    rows = json.loads((fake_pkg / "results.json").read_text())
    assert [r["metric"] for r in rows] == ["fake.rate", "fake.size"]
    assert rows[1]["value"] == 10  # run(quick=True) got the smaller size
    assert main(["--only", "nope"], directory=fake_pkg, package="fakebench") == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_discovers_the_real_benchmarks() -> None:
    names = discover()
    assert {"bench_can", "bench_nmea", "bench_rules", "bench_daemon"} <= set(names)
    assert all(n.startswith("bench_") for n in names)


def test_table_aligns_columns() -> None:
    rows = [{"metric": "a", "value": 1.5, "unit": "ms", "baseline": None, "ratio": None,
             "goal": None, "ok": True},
            {"metric": "bbbbbbbb", "value": 1234567, "unit": "frames/s", "baseline": 2.0,
             "ratio": 0.5, "goal": ">= 1", "ok": False}]
    text = format_table(rows, machine())
    lines = text.splitlines()[1:]
    col = lines[0].index("unit")  # left-aligned text columns start together
    assert lines[2].index(" ms ") + 1 == col and lines[3].index("frames/s") == col
    assert "1,234,567" in text and "-" in lines[2]


def test_python_m_bench_help_runs() -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "--only" in r.stdout and "--quick" in r.stdout
