#!/usr/bin/env python3
"""Fetch every third-party test data set (pinned sha256) into the cache.

Runs each ``scripts/fetch_*.py`` (except this one). A failed download is reported and
the tests that need that data skip with the reason; nothing is committed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
rc = 0
for script in sorted(here.glob("fetch_*.py")):
    if script.name == "fetch_testdata.py":
        continue
    print(f"testdata: {script.name}", flush=True)
    r = subprocess.run([sys.executable, str(script)], check=False)
    if r.returncode != 0:
        print(f"testdata: {script.name} failed with {r.returncode}", file=sys.stderr)
        rc = 1
sys.exit(rc)
