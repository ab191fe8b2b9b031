"""DBC signals to decoders: cantools in a short-lived child process, a disk cache, and
the decoders ``[can]`` describes. The adapter side of ``edge.core.dbcspec``.

cantools costs ~6-8 MB resident that Python never gives back, and the daemon needs it
only to learn one signal's layout. So the layout is compiled by cantools in a child
process (``python -m edge.sources.dbc DBC MESSAGE.SIGNAL`` prints the spec as JSON) and
cached by the DBC's sha256 in ``${XDG_CACHE_HOME:-~/.cache}/vehicle-edge/dbc/``. The next
start with the same DBC reads the cache and spawns nothing; an edited DBC has another
hash and is compiled again. cantools stays the only DBC reader of the project (no second
dialect to keep in agreement); the child's memory goes away when it exits.

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
from pathlib import Path
from typing import Any

from edge.core.canspeed import (
    ChecksumMode,
    DbcIgnitionDecoder,
    DbcSpeedDecoder,
    MultiDecoder,
)
from edge.core.dbcspec import BitLayout, MuxCondition, SignalSpec, split_signal
from edge.errors import ConfigError
from edge.process import cache_root

COMPILE_TIMEOUT_S = 120.0  # a large DBC on a Pi Zero takes a few seconds


# ------------------------------------------------------------------ cantools side (the child)


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
    return cache_root() / "dbc"


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
    root = str(Path(__file__).resolve().parents[2])  # the dir holding "edge"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "edge.sources.dbc", str(dbc), signal],
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


# --------------------------------------------------------------------------- decoders


def speed_decoder(dbc: Path | None, signal: str, *, checksum: ChecksumMode = "auto"
                  ) -> DbcSpeedDecoder:
    """The decoder of one speed signal of ``dbc`` (spec cached, or compiled in a child).
    Raises ConfigError naming the field."""
    split_signal(signal)
    if dbc is None:
        raise ConfigError("can.dbc", "a DBC is needed in dbc mode")
    return DbcSpeedDecoder(load_spec(Path(dbc), signal), checksum=checksum)


def ignition_decoder(dbc: Path, signal: str) -> DbcIgnitionDecoder:
    """The decoder of an ignition signal of ``dbc``. Raises ConfigError naming the field."""
    return DbcIgnitionDecoder(load_spec(Path(dbc), signal))


def decoder_for(config: Any) -> DbcSpeedDecoder | MultiDecoder:
    """The decoder ``[can]`` describes (mode "dbc"): the speed signal, plus the ignition
    signal when ``ignition_signal`` is set. Raises ConfigError naming the field."""
    if config.dbc is None or not config.speed_signal:
        raise ConfigError("can.dbc", "a DBC and can.speed_signal are needed in dbc mode")
    speed = speed_decoder(config.dbc, config.speed_signal, checksum=config.checksum)
    if not getattr(config, "ignition_signal", None):
        return speed
    ignition = ignition_decoder(config.dbc, config.ignition_signal)
    if ignition.frame_ids & speed.frame_ids:
        raise ConfigError("can.ignition_signal",
                          "must be in another message than can.speed_signal")
    return MultiDecoder(speed, ignition)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m edge.sources.dbc DBC MESSAGE.SIGNAL", file=sys.stderr)
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
