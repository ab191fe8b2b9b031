"""CAN log files into samples (speed, ignition, OBD-II engine signals): the log-file
input adapter, on python-can.

candump -L logs (``(1700000000.123456) can0 0B4#DEADBEEF``, CAN-FD ``0B4##1...``) take a
fast path built like a kernel filter: the file is read in large blocks and only the lines
whose ID text is one of the wanted IDs are ever looked at (``bytes.find`` on `` 0B4#``);
every other frame costs one byte scan and a newline count, no object, no parse. Wanted
lines are parsed strictly and handed on as frames to the decoder (its precompiled bit
extraction for a DBC signal; ``edge.core.obd.ObdDecoder`` for recorded OBD-II answers,
which gives speed and the engine signals telemetry carries).
Every line is accounted for: ``#`` comment lines and blank lines are skipped and counted
(``comments``, ``blank``), a line that does not start like a frame (garbage) is
``malformed``, and so is a wanted frame line that does not parse (truncated). Only lines
starting like a frame count in ``frames``.

Any other format python-can reads (.asc, .blf, .trc, .csv, .mf4, a non-candump .log, ...)
goes through ``can.LogReader`` with the same ID filter. Error frames and remote frames are
counted and skipped; a malformed wanted line is counted and skipped. A reader that fails
mid-file (python-can raises on a garbled line) ends the replay with ``stats.truncated`` set.

Timestamps: ``time`` and ``mono`` of each sample are the log time (a replay has one clock).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.core.canspeed import FrameDecoder
from edge.core.obd import ObdDecoder
from edge.model import Ignition, SignalSample, SpeedSample

CAN_ERR_FLAG = 0x20000000
CAN_ERR_BUSOFF = 0x00000040
BLOCK = 1 << 20

_CANDUMP_RE = re.compile(rb"^\((\d+(?:\.\d*)?)\) (\S+) ([0-9A-Fa-f]{1,8})#")
_BLANK_RE = re.compile(rb"^[ \t\r]*$", re.M)
_NO_HASH_RE = re.compile(rb"^\([^\n#]*$", re.M)
_LINE_RE = re.compile(
    rb"\((\d+(?:\.\d*)?)\) \S+ ([0-9A-Fa-f]{3}|[0-9A-Fa-f]{8})#(#[0-9A-Fa-f])?([0-9A-Fa-f]*)\s*"
)


LogFrame = tuple[int, bytes, float]  # arbitration_id, data, log timestamp


class FrameFilter(Protocol):
    """The frames a reader keeps: these IDs, 11- or 29-bit (any decoder is one)."""

    @property
    def frame_ids(self) -> frozenset[int]: ...

    @property
    def extended(self) -> bool: ...


@dataclass(slots=True)
class LogStats:
    """What a replay saw. ``frames`` counts every frame line, wanted or not."""

    format: str = ""
    frames: int = 0
    comments: int = 0  # '#' lines (skipped)
    blank: int = 0
    wanted: int = 0  # frames with a wanted ID
    samples: int = 0
    error_frames: int = 0
    bus_off: int = 0
    remote: int = 0
    malformed: int = 0
    truncated: str | None = None  # why reading stopped early, if it did
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def problems(self) -> str | None:
        """One line on what was skipped as bad input, None when nothing was."""
        parts = []
        if self.malformed:
            parts.append(f"{self.malformed} malformed or truncated line(s)"
                         + (f" (last: {self.last_error})" if self.last_error else ""))
        if self.truncated:
            parts.append(f"reading stopped early: {self.truncated}")
        return "; ".join(parts) or None

    def summary(self) -> str:
        return (f"{self.frames} frames, {self.wanted} with the signal's ID, {self.samples} "
                f"samples, {self.malformed} malformed, {self.comments} comment lines, "
                f"{self.error_frames} error frames")


def is_candump(path: Path) -> bool:
    """True when the file's first line that is neither blank nor a ``#`` comment is a
    candump -L frame line."""
    try:
        with open(path, "rb") as fh:
            for _ in range(64):
                line = fh.readline(4096)
                if not line:
                    return False
                line = line.strip()
                if line and not line.startswith(b"#"):
                    return _CANDUMP_RE.match(line) is not None
    except OSError:
        return False
    return False


def _id_texts(decoder: FrameFilter) -> list[bytes]:
    texts: list[bytes] = []
    for fid in sorted(decoder.frame_ids):
        if decoder.extended:
            forms = {f"{fid:08X}", f"{fid:08x}"}
        else:
            forms = {f"{fid:03X}", f"{fid:03x}"}
        texts.extend(f" {t}#".encode() for t in sorted(forms))
    return texts


def _count_errors(block: bytes, stats: LogStats) -> None:
    # Error frames carry CAN_ERR_FLAG: their 8-digit ID text starts with 2 or 3
    # (a 29-bit data frame ID starts with 0 or 1).
    for marker in (b" 2", b" 3"):
        pos = block.find(marker)
        while pos >= 0:
            end = block.find(b"#", pos, pos + 10)
            if end == pos + 9 and block[pos - 1 : pos] != b")":
                try:
                    can_id = int(block[pos + 1 : end], 16)
                except ValueError:
                    can_id = 0
                if can_id & CAN_ERR_FLAG:
                    stats.error_frames += 1
                    if can_id & CAN_ERR_BUSOFF:
                        stats.bus_off += 1
            pos = block.find(marker, pos + 2)


def _account(block: bytes, stats: LogStats) -> None:
    """Count a block's lines by kind with byte counts (no per-line work): frame lines
    start with '(' and hold a '#'; a '(' line without one is truncated; '#' lines are
    comments; anything else but blank lines is garbage. Exact regex counts only where
    the cheap ones cannot be (comment lines in the block, runs of blank lines)."""
    lines = block.count(b"\n")
    first = block[:1]
    framed = block.count(b"\n(") + (first == b"(")
    comments = block.count(b"\n#") + (first == b"#")
    if b"\n\n\n" in block or b"\r" in block or b" \n" in block:
        blank = len(_BLANK_RE.findall(block)) - 1  # the end of the block matches too
    else:
        blank = block.count(b"\n\n") + (first == b"\n")
    if comments:
        truncated = len(_NO_HASH_RE.findall(block))
    else:
        truncated = max(0, framed - (block.count(b"#") - block.count(b"##")))
    stats.frames += framed - truncated
    stats.comments += comments
    stats.blank += blank
    bad = lines - framed - comments - blank + truncated
    if bad > 0:
        stats.malformed += bad
        if stats.last_error is None:
            stats.last_error = ("a truncated frame line" if truncated
                                else "a line that is not a candump -L frame")


def _candump_frames(path: Path, wanted: FrameFilter, stats: LogStats) -> Iterator[LogFrame]:
    needles = _id_texts(wanted)
    match = _LINE_RE.fullmatch
    fromhex = bytes.fromhex
    with open(path, "rb") as fh:
        tail = b""
        while True:
            chunk = fh.read(BLOCK)
            if chunk:
                cut = chunk.rfind(b"\n")
                if cut < 0:
                    tail += chunk
                    continue
                block = tail + chunk[: cut + 1]
                tail = chunk[cut + 1 :]
            else:
                block, tail = tail, b""
                if not block.strip():
                    break
                block += b"\n"
            _account(block, stats)
            if b" 2" in block or b" 3" in block:
                _count_errors(block, stats)
            hits: list[int] = []
            for needle in needles:
                pos = block.find(needle)
                while pos >= 0:
                    hits.append(pos)
                    pos = block.find(needle, pos + 5)
            if len(needles) > 1:
                hits.sort()
            for pos in hits:
                start = block.rfind(b"\n", 0, pos) + 1
                end = block.find(b"\n", pos)
                line = block[start:end]
                if line[:1] == b"#":
                    continue  # the ID text inside a comment
                stats.wanted += 1
                m = match(line)
                if m is None:
                    if line.rstrip().endswith((b"#R", b"#r")) or b"#R" in line:
                        stats.remote += 1
                    elif line[:1] == b"(":  # counted as a frame: it was not one
                        stats.frames -= 1
                        stats.malformed += 1
                        stats.last_error = f"malformed line: {line[:80]!r}"
                    continue
                ts_text, id_text, _fd, payload = m.groups()
                if len(payload) & 1:
                    stats.frames -= 1
                    stats.malformed += 1
                    stats.last_error = f"odd payload length: {line[:80]!r}"
                    continue
                yield int(id_text, 16), fromhex(payload.decode()), float(ts_text)
            if not chunk:
                break


def _python_can_frames(
    path: Path, decoder: FrameFilter | None, stats: LogStats
) -> Iterator[LogFrame]:
    import can

    kwargs: dict[str, Any] = {}
    if path.suffix.lower() == ".asc":
        kwargs["relative_timestamp"] = False  # epoch seconds, as the other formats give
    wanted = decoder.frame_ids if decoder is not None else None
    extended = decoder.extended if decoder is not None else False
    try:
        reader = can.LogReader(path, **kwargs)
    except Exception as exc:
        raise ValueError(f"cannot read {path.name}: {exc}") from exc
    try:
        it = iter(reader)
        while True:
            try:
                msg = next(it)
            except StopIteration:
                break
            except Exception as exc:
                stats.truncated = f"{type(exc).__name__}: {exc}"
                break
            stats.frames += 1
            if msg.is_error_frame:
                stats.error_frames += 1
                if msg.arbitration_id & CAN_ERR_BUSOFF:
                    stats.bus_off += 1
                continue
            if wanted is not None and (
                msg.arbitration_id not in wanted or msg.is_extended_id != extended
            ):
                continue
            if msg.is_remote_frame:
                stats.remote += 1
                continue
            stats.wanted += 1
            yield msg.arbitration_id, bytes(msg.data), float(msg.timestamp)
    finally:
        stop = getattr(reader, "stop", None)
        if stop is not None:
            stop()


_FRAME_LINE_RE = re.compile(
    rb"^\((\d+(?:\.\d*)?)\)[ \t]+(\S+)[ \t]+([0-9A-Fa-f]{1,8})#(\S*)(?:[ \t]+[RTrt])?[ \t\r]*$")


def iter_candump_lines(path: Path, stats: LogStats | None = None
                       ) -> Iterator[tuple[float, bytes]]:
    """Every frame line of a candump -L log as (timestamp, line without newline), in
    file order: what a replay sends on the bus. The same accounting as the speed path:
    ``#`` comments and blank lines skipped and counted, anything else that is not a frame
    line (garbage, a truncated line) counted as ``malformed`` with ``last_error``."""
    stats = stats if stats is not None else LogStats()
    stats.format = "candump"
    match = _FRAME_LINE_RE.match
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\r\n")
            stripped = line.strip()
            if not stripped:
                stats.blank += 1
                continue
            if stripped[:1] == b"#":
                stats.comments += 1
                continue
            m = match(stripped)
            if m is None:
                stats.malformed += 1
                stats.last_error = f"malformed line: {stripped[:80]!r}"
                continue
            stats.frames += 1
            yield float(m.group(1)), stripped


def iter_log_frames(
    path: Path, decoder: FrameFilter | None = None, stats: LogStats | None = None
) -> Iterator[LogFrame]:
    """(arbitration_id, data, timestamp) of the frames the decoder wants (all without one),
    in file order. A candump -L log read for a decoder takes the fast path; any other
    python-can format goes through ``can.LogReader``. Error and remote frames are counted
    and skipped. Raises ValueError for an unreadable file."""
    path = Path(path)
    stats = stats if stats is not None else LogStats()
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    if decoder is not None and is_candump(path):
        stats.format = "candump"
        yield from _candump_frames(path, decoder, stats)
        return
    stats.format = path.suffix.lower().lstrip(".") or "?"
    yield from _python_can_frames(path, decoder, stats)


def iter_log_speed(
    path: Path, decoder: FrameDecoder, stats: LogStats | None = None
) -> Iterator[SpeedSample | Ignition]:
    """Speed samples (and ignition changes) of a CAN log, in file order. Raises
    ValueError for an unreadable file."""
    stats = stats if stats is not None else LogStats()
    decode = decoder.decode
    for arb_id, data, ts in iter_log_frames(path, decoder, stats):
        sample = decode(arb_id, data, ts, ts)
        if sample is not None:
            stats.samples += 1
            yield sample


def iter_log_obd(
    path: Path, stats: LogStats | None = None
) -> Iterator[SpeedSample | SignalSample]:
    """What the recorded OBD-II answers of a CAN log carry, in file order: speed, and
    engine speed and coolant temperature as the signals the live source emits. Raises
    ValueError for an unreadable file."""
    stats = stats if stats is not None else LogStats()
    decoder = ObdDecoder()
    for arb_id, data, ts in iter_log_frames(path, decoder, stats):
        for sample in decoder.decode_all(arb_id, data, ts, ts):
            stats.samples += 1
            yield sample
