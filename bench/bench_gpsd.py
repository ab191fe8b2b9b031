"""gpsd parity of positions (see ``bench.gpsd_parity``): recall and precision of our
mode >= 2 positions against gpsd 3.22's answer keys, over every NMEA regression log.
The baseline, measured in the same run, is the same count over ``valid`` fixes only
(the quality policy the rules use). Skipped (one not-ok row) without the logs."""

from __future__ import annotations

from typing import Any

from bench.gpsd_parity import logs_dir, parity

GOAL = 0.97


def run() -> list[dict[str, Any]]:
    p = parity()
    if not p.logs:
        return [{"metric": "gpsd.positions", "value": None, "unit": "",
                 "baseline": None, "ratio": None,
                 "goal": f"logs in {logs_dir()} (scripts/fetch_gpsd_logs.py)", "ok": False}]
    v = parity(valid_only=True)
    return [
        {"metric": f"gpsd.position_recall ({p.logs} NMEA logs)", "value": round(p.recall, 3),
         "unit": "", "baseline": round(v.recall, 3), "ratio": None,
         "goal": f">= {GOAL}", "ok": p.recall >= GOAL},
        {"metric": "gpsd.position_precision", "value": round(p.precision, 3), "unit": "",
         "baseline": round(v.precision, 3), "ratio": None,
         "goal": f">= {GOAL}", "ok": p.precision >= GOAL},
    ]
