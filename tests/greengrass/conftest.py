"""The Greengrass system test on a real nucleus lite (``make greengrass``).

Runs only with ``--greengrass`` (``make greengrass`` passes it, after ``make
components``); under ``make test`` every test here is skipped with that reason. The
nucleus is ``../shared/greengrass-lite/gg-lite`` beside the checkout (or ``$GG_LITE``):
AWS IoT Greengrass nucleus lite 2.6.0 in a systemd-nspawn container, offline.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GG_LITE = Path(os.environ.get("GG_LITE") or ROOT.parent / "shared" / "greengrass-lite" / "gg-lite")
BUILD = ROOT / "build" / "greengrass"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--greengrass", action="store_true", default=False,
                     help="run the system test on a real Greengrass nucleus lite (gg-lite)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "greengrass: needs gg-lite and root (make greengrass)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    mine = [i for i in items if here in Path(str(i.fspath)).parents]
    for item in mine:
        item.add_marker(pytest.mark.greengrass)
    if not config.getoption("--greengrass", default=False):
        skip = pytest.mark.skip(reason="the real-nucleus test runs with make greengrass")
        for item in mine:
            item.add_marker(skip)


@dataclass
class Deployed:
    rc: int
    out: str
    seconds: float


@dataclass
class GgLite:
    """``gg-lite`` driven from a test: every call logged with its duration."""

    tool: Path
    timings: list[tuple[str, float]] = field(default_factory=list)

    def run(self, *args: str, timeout: float = 400, check: bool = True) -> Deployed:
        t0 = time.monotonic()
        r = subprocess.run([str(self.tool), *args], capture_output=True, text=True,
                           timeout=timeout)
        dt = time.monotonic() - t0
        self.timings.append((" ".join(args[:2]), dt))
        out = r.stdout + r.stderr
        if check and r.returncode != 0:
            raise AssertionError(f"gg-lite {shlex.join(args)} -> {r.returncode}\n{out}")
        return Deployed(rc=r.returncode, out=out, seconds=dt)

    def sh(self, cmd: str, *, user: str | None = None, check: bool = True) -> str:
        args = ["sh", cmd] + (["--user", user] if user else [])
        return self.run(*args, timeout=60, check=check).out

    def put(self, src: Path, dest: str) -> None:
        """Copy the directory ``src`` into the container at ``dest`` (readable by all)."""
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(src, arcname=".")
        q = shlex.quote(dest)
        r = subprocess.run([str(self.tool), "sh", f"mkdir -p {q} && tar -x -C {q} && "
                            f"chmod -R a+rX {q}"], input=buf.getvalue(), capture_output=True,
                           timeout=60, check=False)
        assert r.returncode == 0, r.stdout + r.stderr

    def deploy(self, recipes: Path, artifacts: Path, *args: str) -> Deployed:
        return self.run("deploy", "--recipe-dir", str(recipes), "--artifacts-dir",
                        str(artifacts), *args, check=False)

    def state(self) -> dict[str, tuple[str, str]]:
        """{component: (version, state)} of the vehicleedge components."""
        out = self.run("state").out
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].startswith("com.vehicleedge."):
                states[parts[0]] = (parts[1], parts[2])
        return states

    def logs(self, name: str, n: str = "all") -> str:
        return self.run("logs", name, "-n", n, check=False).out

    def main_pid(self, name: str) -> int:
        return int(self.sh(f"systemctl show -p MainPID --value ggl.{name}.service").strip())

    def json_file(self, path: str) -> dict[str, Any]:
        out = self.sh(f"cat {shlex.quote(path)}")
        return dict(json.loads(out[out.index("{"):]))


@pytest.fixture(scope="session")
def gg(request: pytest.FixtureRequest) -> Iterator[GgLite]:
    if not GG_LITE.is_file():
        pytest.fail(f"{GG_LITE} not found: make greengrass needs ../shared/greengrass-lite "
                    "beside the checkout (or GG_LITE=/path/to/gg-lite)")
    if os.geteuid() != 0:
        pytest.fail("gg-lite (systemd-nspawn) needs root")
    tool = GgLite(GG_LITE)
    tool.run("down", check=False, timeout=60)  # a fresh instance, whatever ran before
    t0 = time.monotonic()
    tool.run("up", timeout=600)
    print(f"\ngg-lite up: {time.monotonic() - t0:.1f} s")
    try:
        yield tool
    finally:
        tool.run("down", check=False, timeout=60)
        print("\ngg-lite timings: " + ", ".join(
            f"{a} {t:.1f} s" for a, t in tool.timings if a.split()[0] in ("up", "deploy", "down")))
