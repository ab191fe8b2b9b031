"""One DBC signal, compiled to a small JSON spec, so the daemon never imports cantools.

cantools costs ~6-8 MB resident that Python never gives back, and the daemon needs it
only to learn one signal's layout. So the layout is compiled by cantools in a short-lived
child process (``python -m edge.core.dbcspec DBC MESSAGE.SIGNAL`` prints the spec as
JSON) and cached by the DBC's sha256 in ``${XDG_CACHE_HOME:-~/.cache}/vehicle-edge/dbc/``.
The next start with the same DBC reads the cache and spawns nothing; an edited DBC has
another hash and is compiled again. cantools stays the only DBC reader of the project
(no second dialect to keep in agreement); the child's memory goes away when it exits.

The spec holds what decoding one signal needs: the frame (id, extended, length, FD),
the signal's bit layout, scale/offset/range/unit, its value table (to spot "SNA" raw
values), the multiplexer chain above it, and the layout of the message's CHECKSUM signal.

Errors are ``ConfigError`` naming ``can.dbc`` (file missing or unreadable, cantools
missing) or ``can.speed_signal`` (no such message/signal), raised in the child and
re-raised here with the same field and reason. An unwritable cache is not an error: the
spec is then compiled at every start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

FORMAT = 1  # bump when SignalSpec changes: old cache files are then ignored
COMPILE_TIMEOUT_S = 120.0  # a large DBC on a Pi Zero takes a few seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class BitLayout:
    """Where a signal's raw bits are (cantools/DBC conventions)."""

    start: int  # DBC start bit: LSB for little endian, MSB (sawtooth numbering) for big
    length: int
    byte_order: str  # "little_endian" | "big_endian"
    signed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MuxCondition:
    """The multiplexer signal above ours must carry one of ``ids``."""

    name: str
    layout: BitLayout
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalSpec:
    message: str
    signal: str
    frame_id: int
    extended: bool
    length: int  # bytes the DBC gives the message
    is_fd: bool
    layout: BitLayout
    is_float: bool
    scale: float
    offset: float
    minimum: float | None
    maximum: float | None
    unit: str | None
    choices: tuple[tuple[int, str], ...]  # VAL_ table: raw value -> name
    raw_invalid: int | None
    mux: tuple[MuxCondition, ...]  # innermost first
    checksum: BitLayout | None  # the message's CHECKSUM signal, if any
    signals: tuple[str, ...]  # every signal of the message (for messages to the user)

    @property
    def name(self) -> str:
        return f"{self.message}.{self.signal}"

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SignalSpec:
        """The inverse of ``to_json``; ValueError/KeyError/TypeError on a bad document."""
        if d.get("format") != FORMAT:
            raise ValueError(f"spec format {d.get('format')!r}, expected {FORMAT}")

        def layout(x: dict[str, Any]) -> BitLayout:
            return BitLayout(start=int(x["start"]), length=int(x["length"]),
                             byte_order=str(x["byte_order"]), signed=bool(x["signed"]))

        def opt_float(x: Any) -> float | None:
            return None if x is None else float(x)

        return cls(
            message=str(d["message"]),
            signal=str(d["signal"]),
            frame_id=int(d["frame_id"]),
            extended=bool(d["extended"]),
            length=int(d["length"]),
            is_fd=bool(d["is_fd"]),
            layout=layout(d["layout"]),
            is_float=bool(d["is_float"]),
            scale=float(d["scale"]),
            offset=float(d["offset"]),
            minimum=opt_float(d["minimum"]),
            maximum=opt_float(d["maximum"]),
            unit=None if d["unit"] is None else str(d["unit"]),
            choices=tuple((int(r), str(n)) for r, n in d["choices"]),
            raw_invalid=None if d["raw_invalid"] is None else int(d["raw_invalid"]),
            mux=tuple(MuxCondition(name=str(m["name"]), layout=layout(m["layout"]),
                                   ids=tuple(int(i) for i in m["ids"])) for m in d["mux"]),
            checksum=None if d["checksum"] is None else layout(d["checksum"]),
            signals=tuple(str(s) for s in d["signals"]),
        )


def split_signal(signal: str) -> tuple[str, str]:
    """"MESSAGE.SIGNAL" -> (message, signal); ConfigError('can.speed_signal') otherwise."""
    if not signal or signal.count(".") != 1 or "" in signal.split("."):
        raise ConfigError("can.speed_signal", f"must be 'MESSAGE.SIGNAL', got {signal!r}")
    msg, sig = signal.split(".")
    return msg, sig


# --------------------------------------------------------------------------- cantools side


def load_database(dbc: Path) -> Any:
    """Read a DBC with cantools (imported here). Raises ConfigError('can.dbc')."""
    try:
        import cantools
    except ImportError as exc:  # pragma: no cover - cantools is a dependency
        raise ConfigError("can.dbc", "cantools is not installed (pip install cantools)") from exc
    if not Path(dbc).is_file():
        raise ConfigError("can.dbc", f"file not found: {dbc}")
    try:
        return cantools.database.load_file(str(dbc), database_format="dbc")
    except Exception:
        # Real-world DBCs (opendbc among them) overlap signals; strict mode refuses them.
        try:
            return cantools.database.load_file(str(dbc), database_format="dbc", strict=False)
        except Exception as exc:
            raise ConfigError("can.dbc", f"cannot read {dbc}: {exc}") from exc


def _layout(sig: Any) -> BitLayout:
    return BitLayout(start=int(sig.start), length=int(sig.length),
                     byte_order=str(sig.byte_order), signed=bool(sig.is_signed))


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def spec_from_message(message: Any, sig_name: str) -> SignalSpec:
    """The spec of one signal of a cantools ``Message``. ConfigError('can.speed_signal')."""
    try:
        sig = message.get_signal_by_name(sig_name)
    except KeyError:
        names = ", ".join(sorted(s.name for s in message.signals))
        raise ConfigError(
            "can.speed_signal",
            f"message {message.name} has no signal {sig_name!r} (signals: {names})",
        ) from None
    mux: list[MuxCondition] = []
    current = sig
    while current.multiplexer_ids:
        parent = message.get_signal_by_name(current.multiplexer_signal)
        mux.append(MuxCondition(name=str(parent.name), layout=_layout(parent),
                                ids=tuple(int(i) for i in current.multiplexer_ids)))
        current = parent
    cs = next((s for s in message.signals if s.name.upper() == "CHECKSUM"), None)
    raw_invalid = getattr(sig, "raw_invalid", None)
    length = int(message.length)
    return SignalSpec(
        message=str(message.name),
        signal=str(sig.name),
        frame_id=int(message.frame_id),
        extended=bool(message.is_extended_frame),
        length=length,
        is_fd=bool(getattr(message, "is_fd", False)) or length > 8,
        layout=_layout(sig),
        is_float=bool(sig.is_float),
        scale=float(sig.scale),
        offset=float(sig.offset),
        minimum=_num(sig.minimum),
        maximum=_num(sig.maximum),
        unit=sig.unit if sig.unit is None else str(sig.unit),
        choices=tuple(sorted((int(r), str(n)) for r, n in (sig.choices or {}).items())),
        raw_invalid=raw_invalid if isinstance(raw_invalid, int) else None,
        mux=tuple(mux),
        checksum=None if cs is None else _layout(cs),
        signals=tuple(str(s.name) for s in message.signals),
    )


def compile_spec(dbc: Path, signal: str) -> SignalSpec:
    """Compile in this process (imports cantools). What the child process runs."""
    msg_name, sig_name = split_signal(signal)
    db = load_database(Path(dbc))
    try:
        message = db.get_message_by_name(msg_name)
    except KeyError:
        raise ConfigError(
            "can.speed_signal", f"message {msg_name!r} is not in {Path(dbc).name}"
        ) from None
    return spec_from_message(message, sig_name)


# --------------------------------------------------------------------------- daemon side


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vehicle-edge" / "dbc"


def cache_path(digest: str, signal: str, directory: Path | None = None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", signal)[:120]
    return (directory or cache_dir()) / f"{digest}-{safe}.json"


def _read_cache(path: Path, digest: str, signal: str) -> SignalSpec | None:
    try:
        d = json.loads(path.read_text())
        if d.get("dbc_sha256") != digest or d.get("requested") != signal:
            return None
        return SignalSpec.from_json(d["spec"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, stale format or damaged: compile again


def _write_cache(path: Path, digest: str, signal: str, spec: SignalSpec) -> bool:
    doc = {"dbc_sha256": digest, "requested": signal, "spec": spec.to_json()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def _compile_in_child(dbc: Path, signal: str) -> SignalSpec:
    import subprocess  # already loaded by asyncio in the daemon

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)  # the dir holding "edge"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "edge.core.dbcspec", str(dbc), signal],
            capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError("can.dbc", f"cannot compile {signal} from {dbc}: {exc}") from exc
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        tail = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise ConfigError("can.dbc", f"cannot compile {signal} from {dbc}: {tail}") from None
    if "error" in doc:
        raise ConfigError(str(doc["error"]["field"]), str(doc["error"]["reason"]))
    return SignalSpec.from_json(doc)


def load_spec(dbc: Path, signal: str, *, cache: Path | None = None) -> SignalSpec:
    """The spec of ``signal`` in ``dbc``, from the cache or compiled in a child process.

    Never imports cantools in this process. Raises ConfigError like ``compile_spec``.
    """
    split_signal(signal)
    dbc = Path(dbc)
    try:
        digest = hashlib.sha256(dbc.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise ConfigError("can.dbc", f"file not found: {dbc}") from None
    except OSError as exc:
        raise ConfigError("can.dbc", f"cannot read {dbc}: {exc}") from exc
    path = cache_path(digest, signal, cache)
    spec = _read_cache(path, digest, signal)
    if spec is None:
        spec = _compile_in_child(dbc, signal)
        _write_cache(path, digest, signal, spec)
    return spec


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m edge.core.dbcspec DBC MESSAGE.SIGNAL", file=sys.stderr)
        return 64
    try:
        spec = compile_spec(Path(args[0]), args[1])
    except ConfigError as exc:
        print(json.dumps({"error": {"field": exc.field, "reason": exc.reason}}))
        return 2
    print(json.dumps(spec.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
