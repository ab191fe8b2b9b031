"""What ``edge run`` loads: a config without ``[roads]``, encryption, CAN or a cloud SDK
uplink must not import the libraries those need (RSS on a Pi, the project's 60 MB bar)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tty
from pathlib import Path

import pytest

from edge.daemon.heap import limit_arenas
from tests.support.daemon import run_until_health, zones_file_uplink_config

ROOT = Path(__file__).resolve().parents[2]
# a real ``python -m MODULE ARGS`` (``edge run``: ``-m edge run ...``) whose loaded modules
# are written out when it exits
CHILD = """
import atexit, json, runpy, sys
out, module = sys.argv[1:3]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
DBC = ROOT / "sim" / "dbc" / "demo.dbc"
# none of these serves a GNSS + zones + file-uplink daemon; ctypes.util would run
# ``ldconfig -p`` at start (the heap knobs find libc in the process instead) and gzip
# is for an uplink that compresses; the whole-drive geometry is edge replay's and edge
# report's; uvloop only when VEHICLE_EDGE_EVENT_LOOP asks for it
ABSENT = ("edge.roads", "edge.commands", "cryptography", "cantools", "can", "awscrt",
          "awsiot", "paho", "matplotlib", "rich", "colorama", "pyosmium", "osmium",
          "ctypes.util", "gzip", "edge.core.drivegeo", "uvloop")
# the module diet of the encrypted CAN (DBC) daemon (issue 18: RSS <= 60 MB): AES-GCM
# needs no X.509, key serialisation or asymmetric crypto; a DBC bus no OBD-II session
ABSENT_ENCRYPTED_DBC = ("edge.roads", "edge.commands", "edge.core.drivegeo", "cantools",
                        "awscrt", "awsiot", "matplotlib", "ctypes.util", "edge.core.obd",
                        "edge.sources.canobd",
                        "cryptography.x509", "cryptography.hazmat.primitives.serialization",
                        "cryptography.hazmat.primitives.asymmetric",
                        "cryptography.hazmat.backends", "uvloop")


def loaded_modules(tmp_path: Path, sections: str,
                   command: tuple[str, ...] = ("edge", "run")) -> list[str]:
    """The modules a real ``edge run`` (or ``python -m`` ``command``) with a GNSS pty,
    the city zones, a file uplink and ``sections`` has loaded once it wrote its first
    health file."""
    master, slave = os.openpty()
    tty.setraw(slave)
    health = tmp_path / "health.json"
    cfg = zones_file_uplink_config(tmp_path, "car-imports-1", os.ttyname(slave),
                                   sections.replace("@", str(tmp_path)))
    mods = tmp_path / "modules.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("MALLOC_ARENA_MAX", None)
    try:
        run_until_health([sys.executable, "-c", CHILD, str(mods), *command, "--config",
                          str(cfg)], env=env, cwd=tmp_path, health=health)
    finally:
        os.close(master)
        os.close(slave)
    return list(json.loads(mods.read_text()))


def _under(loaded: list[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == p or m.startswith(p + ".") for p in names))


def test_edge_run_without_roads_or_encryption_does_not_import_them(tmp_path: Path) -> None:
    loaded = loaded_modules(tmp_path, '[outbox]\npath = "@/o.db"\n')
    assert "shapely" in loaded and "edge.core.zones" in loaded  # the config's zones
    assert _under(loaded, ABSENT) == []


def test_encrypted_dbc_daemon_loads_aes_gcm_and_no_more(tmp_path: Path) -> None:
    from edge.seal import keygen

    keygen(tmp_path / "outbox.key")
    loaded = loaded_modules(
        tmp_path,
        '[outbox]\npath = "@/o.db"\nencryption = "aes-256-gcm"\nkey_file = "@/outbox.key"\n'
        f'[can]\ninterface = "virtual"\nchannel = "imports-test"\ndbc = "{DBC}"\n'
        'speed_signal = "VEHICLE_SPEED.SPEED_KMH"\n')
    # the config's parts are there: the sealer, the CAN bus, the DBC decoder
    assert {"cryptography.hazmat.primitives.ciphers.aead", "can", "edge.sources.dbc",
            "edge.seal"} <= set(loaded)
    assert _under(loaded, ABSENT_ENCRYPTED_DBC) == []


def test_the_daemon_entry_runs_edge_run_without_the_command_line_parser(
    tmp_path: Path,
) -> None:
    """``python -m edge.daemon --config FILE``: the daemon of ``edge run`` (it wrote its
    health, stopped cleanly on SIGTERM) without argparse, gettext and ``edge.cli``
    (0.3-0.4 MB of the encrypted CAN daemon's RSS)."""
    loaded = loaded_modules(tmp_path, '[outbox]\npath = "@/o.db"\n', ("edge.daemon",))
    assert {"edge.app", "edge.core.zones", "edge.outbox"} <= set(loaded)
    assert _under(loaded, ("argparse", "gettext", "edge.cli", *ABSENT)) == []
    # edge run itself still parses its command line with argparse
    (tmp_path / "cli").mkdir()
    assert "argparse" in loaded_modules(tmp_path / "cli", '[outbox]\npath = "@/o.db"\n')


@pytest.mark.parametrize("argv", [[], ["--config"], ["run", "--config", "x.toml"],
                                  ["--greengrass", "--config", "x.toml"], ["--help"]])
def test_the_daemon_entry_refuses_anything_but_its_two_forms(argv: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "edge.daemon", *argv], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert "usage: python -m edge.daemon (--config FILE | --greengrass)" in r.stderr
    assert "edge run" in r.stderr


def test_the_daemon_entry_names_the_invalid_config_field(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text('thing = "car-1"\n[gnss]\nbaud = "fast"\n')
    for cmd in (["-m", "edge.daemon"], ["-m", "edge", "run"]):
        r = subprocess.run([sys.executable, *cmd, "--config", str(cfg)], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 2, (cmd, r.stderr)
        assert "gnss.baud" in r.stderr, (cmd, r.stderr)


def test_malloc_arenas_are_capped_unless_the_operator_set_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not os.path.exists("/proc/self/maps") or "glibc" not in " ".join(
            __import__("platform").libc_ver()):
        pytest.skip("glibc only")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_arenas() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False  # the environment's value stands
