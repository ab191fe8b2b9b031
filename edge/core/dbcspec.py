"""One DBC signal as a small value: what decoding it needs, and its JSON form. Pure.

The spec is made by cantools in a short-lived child process and cached on disk
(``edge.sources.dbc``: the daemon never imports cantools); this module is only the value
and its (de)serialisation, so the pure decoder (``edge.core.canspeed``) can use it.

The spec holds what decoding one signal needs: the frame (id, extended, length, FD),
the signal's bit layout, scale/offset/range/unit, its value table (to spot "SNA" raw
values), the multiplexer chain above it, and the layout of the message's CHECKSUM signal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edge.errors import ConfigError

FORMAT = 1  # bump when SignalSpec changes: old cache files are then ignored


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
