"""The rules benchmark runs and reports rows in the shared shape (numbers not asserted:
the machine is shared; ``make bench`` judges the goal)."""

from __future__ import annotations

from bench.bench_rules import drive, make_zones, run


def test_bench_rows_have_the_shared_shape() -> None:
    rows = run(n_fixes=200)
    assert [r["metric"] for r in rows] == [
        m for n in (10, 1_000, 10_000) for m in (
            f"rules.on_fix drive @ {n} fences", f"rules.on_fix random @ {n} fences",
            f"rules.replay drive @ {n} fences (bulk geometry)")]
    for r in rows:
        assert set(r) == {"metric", "value", "unit", "baseline", "ratio", "goal", "ok"}
        assert r["unit"] == "fixes/s" and r["value"] > 0 and r["baseline"] > 0
        assert isinstance(r["ok"], bool)
    assert [r["goal"] for r in rows if r["goal"]] == [50_000.0, 50_000.0, 250_000.0]


def test_bench_fences_and_drive_are_deterministic() -> None:
    assert [z.bounds for z in make_zones(50).zones] == [z.bounds for z in make_zones(50).zones]
    assert drive(30) == drive(30)
