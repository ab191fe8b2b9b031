"""``edge/core/`` is pure: no module there does I/O (design.md: "No asyncio, no sockets,
no files, no subprocesses"). The daemon's adapters (edge/sources, edge/uplinks, the
outbox) do it and hand the core values; the core takes time as an argument.

Read from the source (``ast``), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "edge" / "core"

# Libraries whose job is I/O: processes, sockets, serial ports, CAN buses, databases,
# threads and event loops, files and directories, terminals, the network.
IO_MODULES = frozenset({
    "asyncio", "awscrt", "can", "concurrent", "fcntl", "fileinput", "ftplib", "glob",
    "http", "mmap", "multiprocessing", "paho", "pty", "select", "selectors", "serial",
    "shutil", "signal", "socket", "socketserver", "sqlite3", "ssl", "subprocess",
    "tempfile", "termios", "threading", "tty", "urllib",
})
# Path methods that touch the file system (a Path as a plain value is fine).
FS_METHODS = frozenset({
    "read_text", "read_bytes", "write_text", "write_bytes", "open", "exists", "is_file",
    "is_dir", "iterdir", "glob", "rglob", "mkdir", "rmdir", "unlink", "touch", "stat",
    "lstat", "samefile", "symlink_to", "chmod",
})
# os is allowed for its random source only.
OS_ALLOWED = frozenset({"urandom"})
# Builtins that read or write a file or the terminal.
IO_BUILTINS = frozenset({"open", "print", "input"})

def io_uses(source: str) -> list[str]:
    """Every I/O use in ``source``: ``line: what``."""
    tree = ast.parse(source)
    os_names = {"os"}  # names bound to the os module
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in IO_MODULES:
                    found.append(f"{node.lineno}: import {alias.name}")
                elif alias.name == "os":
                    os_names.add(alias.asname or "os")
                elif top == "os":
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in IO_MODULES:
                found.append(f"{node.lineno}: from {node.module} import ...")
            elif top == "os":
                bad = [a.name for a in node.names
                       if node.module != "os" or a.name not in OS_ALLOWED]
                if bad:
                    found.append(f"{node.lineno}: from {node.module} import {', '.join(bad)}")
        elif isinstance(node, ast.Attribute):
            if (isinstance(node.value, ast.Name) and node.value.id in os_names
                    and node.attr not in OS_ALLOWED):
                found.append(f"{node.lineno}: os.{node.attr}")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in IO_BUILTINS:
                found.append(f"{node.lineno}: {f.id}()")
            elif isinstance(f, ast.Attribute) and f.attr in FS_METHODS:
                found.append(f"{node.lineno}: .{f.attr}()")
    return sorted(set(found), key=lambda s: int(s.split(":")[0]))


MODULES = sorted(CORE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_core_module_does_no_io(path: Path) -> None:
    assert io_uses(path.read_text(encoding="utf-8")) == [], f"edge/core/{path.name} does I/O"


def test_core_is_where_the_test_looks() -> None:
    names = {p.name for p in MODULES}
    assert {"nmea.py", "rules.py", "zones.py", "engine.py"} <= names


@pytest.mark.parametrize(("source", "expected"), [
    ("import subprocess", ["1: import subprocess"]),
    ("def f():\n    import can\n    return can", ["2: import can"]),
    ("from concurrent.futures import Future", ["1: from concurrent.futures import ..."]),
    ("import sqlite3 as db", ["1: import sqlite3"]),
    ("with open('x') as fh:\n    pass", ["1: open()"]),
    ("from pathlib import Path\nPath('z.json').read_text()", ["2: .read_text()"]),
    ("import os\nos.replace('a', 'b')", ["2: os.replace"]),
    ("import os.path\n", ["1: import os.path"]),
    ("from os import listdir", ["1: from os import listdir"]),
    ("import os as o\no.getcwd()", ["2: os.getcwd"]),
    ("print('hello')", ["1: print()"]),
])
def test_detector_finds_each_kind_of_io(source: str, expected: list[str]) -> None:
    assert io_uses(textwrap.dedent(source)) == expected


@pytest.mark.parametrize("source", [
    "import os\nos.urandom(8)",
    "from pathlib import Path\ndef f(p: Path) -> str:\n    return p.name",
    "import json\njson.loads('{}')",
    "import dataclasses\ndataclasses.replace(x, a=1)",
    "'a,b'.split(',')",
])
def test_detector_lets_pure_code_be(source: str) -> None:
    assert io_uses(source) == []
