"""CAN payload -> vehicle speed, by one DBC signal ("MESSAGE.SIGNAL"). Pure.

The signal's layout is an ``edge.core.dbcspec.SignalSpec``: ``edge.sources.dbc`` has
cantools read the DBC in a short-lived child process and caches the spec by the DBC's
sha256, so the daemon never imports cantools (~6-8 MB resident for good). Per frame we
do not call cantools' ``decode_message`` (it decodes every signal of the message and
builds a dict); the one signal we need is compiled into a closure that extracts its raw bits (start,
length, byte order, signedness), applies scale/offset and the unit factor, and checks
the multiplexer chain and (optionally) the Toyota-style checksum. Tests check the closure
agrees with cantools on random layouts and payloads.

Speeds leave this module in km/h whatever the DBC unit (km/h, m/s, mph). Frames of the
wrong length, of another multiplexer value, with a bad checksum, a raw value the DBC
names as "invalid"/"SNA", or a value outside the signal's [min|max] are counted in
``stats`` and skipped: ``decode`` never raises for a bad frame.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from edge.core.dbcspec import BitLayout, SignalSpec
from edge.errors import ConfigError
from edge.model import Ignition, SpeedSample

ChecksumMode = Literal["auto", "toyota", "none"]

# unit text (lower case, spaces removed) -> factor to km/h
_UNIT_FACTORS: dict[str, float] = {
    "km/h": 1.0, "kmh": 1.0, "kph": 1.0, "km/hr": 1.0, "kmph": 1.0, "kilometers/hour": 1.0,
    "m/s": 3.6, "mps": 3.6, "meters/second": 3.6,
    "mph": 1.609344, "mi/h": 1.609344, "miles/hour": 1.609344,
}

# In "auto" checksum mode, give up verification when this many frames in a row failed
# from the start (the DBC has a CHECKSUM signal but the car uses another algorithm):
# a wrong guess must not silently cost us the speed signal.
AUTO_CHECKSUM_PROBE = 16

Extractor = Callable[[bytes], int]


@dataclass(slots=True)
class DecodeStats:
    """Counters of one decoder (mutable; read them, do not write them)."""

    frames: int = 0  # frames with our frame ID
    decoded: int = 0
    wrong_length: int = 0
    decode_errors: int = 0
    checksum_errors: int = 0
    other_mux: int = 0  # multiplexed frame carrying another multiplexer value
    invalid: int = 0  # raw value named in the DBC (e.g. 0xFFFF "SNA") or out of range
    checksum: str = "none"  # "toyota", "none", or "disabled: <reason>"
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FrameDecoder(Protocol):
    """What log replay and the bus source need from a decoder (DBC or OBD)."""

    @property
    def frame_ids(self) -> frozenset[int]: ...

    @property
    def extended(self) -> bool: ...

    def decode(
        self, arbitration_id: int, data: bytes, time: float, mono: float
    ) -> SpeedSample | Ignition | None: ...


def make_extractor(
    start: int, length: int, byte_order: str, signed: bool
) -> tuple[Extractor, int]:
    """Compile one signal's bit layout (cantools/DBC conventions) into a function.

    Returns (extract, bytes_needed). ``start`` is the DBC start bit: the LSB for
    little endian (Intel), the MSB in DBC "sawtooth" numbering for big endian (Motorola).
    """
    if length <= 0:
        raise ValueError("signal length must be positive")
    mask = (1 << length) - 1
    sign_bit = 1 << (length - 1)
    full = 1 << length
    from_bytes = int.from_bytes
    if byte_order == "little_endian":
        need = (start + length + 7) // 8
        shift = start

        if signed:
            def extract(data: bytes) -> int:
                raw = (from_bytes(data, "little") >> shift) & mask
                return raw - full if raw & sign_bit else raw
        else:
            def extract(data: bytes) -> int:
                return (from_bytes(data, "little") >> shift) & mask
    else:
        msb0 = (start // 8) * 8 + 7 - start % 8  # bit index counted from the first bit sent
        end = msb0 + length
        need = (end + 7) // 8

        if signed:
            def extract(data: bytes) -> int:
                raw = (from_bytes(data, "big") >> (8 * len(data) - end)) & mask
                return raw - full if raw & sign_bit else raw
        else:
            def extract(data: bytes) -> int:
                return (from_bytes(data, "big") >> (8 * len(data) - end)) & mask
    return extract, need


def toyota_checksum(arbitration_id: int, data: bytes) -> int:
    """Toyota's frame checksum (last byte): length + ID bytes + all other bytes, mod 256."""
    s = len(data)
    addr = arbitration_id
    while addr:
        s += addr & 0xFF
        addr >>= 8
    return (s + sum(data[:-1])) & 0xFF


def unit_factor(unit: str | None) -> float | None:
    """km/h per unit of the signal; None when the unit is not a speed unit."""
    key = (unit or "").strip().lower().replace(" ", "")
    if not key:
        return 1.0  # unitless speed signals are km/h by convention (assumed, recorded)
    return _UNIT_FACTORS.get(key)


class DbcSpeedDecoder:
    """Decode one speed signal from its CAN frame. Pure: time comes in as arguments.

    Built from a ``SignalSpec`` (``edge.sources.dbc.speed_decoder`` loads one from a
    DBC, cached, or compiled by cantools in a child process).
    """

    def __init__(self, spec: SignalSpec, *, checksum: ChecksumMode = "auto") -> None:
        signal, msg_name = spec.name, spec.message
        factor = self._unit_factor(spec, signal)
        self.signal = signal
        self.spec = spec
        self.unit = spec.unit or "km/h (assumed)"
        self.stats = DecodeStats()
        self._frame_id: int = spec.frame_id
        self._extended: bool = spec.extended
        self._length: int = spec.length
        self._is_fd: bool = spec.is_fd or self._length > 8
        lay = spec.layout
        self._extract, need = make_extractor(lay.start, lay.length, lay.byte_order, lay.signed)
        self._float_fmt: str | None = None
        if spec.is_float:
            self._float_fmt = {32: "<f", 64: "<d"}.get(lay.length)
            if self._float_fmt is None:
                raise ConfigError(self.FIELD, f"{signal}: float of {lay.length} bits")
        self._scale = spec.scale * factor
        self._offset = spec.offset * factor
        lo, hi = spec.minimum, spec.maximum
        # [0|0] (and any empty range) means "not specified" in many DBCs
        self._range: tuple[float, float] | None = None
        if lo is not None and hi is not None and hi > lo:
            self._range = (lo * factor - 1e-9, hi * factor + 1e-9)
        invalid: set[int] = set()
        for raw, name in spec.choices:
            if any(w in name.lower() for w in ("invalid", "sna", "not avail", "error")):
                invalid.add(raw)
        if spec.raw_invalid is not None:
            invalid.add(spec.raw_invalid)
        self._invalid = frozenset(invalid)
        # multiplexer chain: every multiplexer above our signal must carry one of its ids
        chain: list[tuple[Extractor, frozenset[int]]] = []
        for cond in spec.mux:
            m = cond.layout
            mux_extract, mux_need = make_extractor(m.start, m.length, m.byte_order, m.signed)
            chain.append((mux_extract, frozenset(cond.ids)))
            need = max(need, mux_need)
        self._mux_chain = tuple(chain)
        self._need = need
        self._checksum_extract: Extractor | None = None
        self._checksum_probe = 0
        if checksum != "none":
            cs = spec.checksum
            toyota_layout = cs is not None and cs.length == 8 and self._last_byte(cs)
            if toyota_layout and cs is not None:
                self._checksum_extract, _ = make_extractor(cs.start, 8, cs.byte_order, False)
                self.stats.checksum = "toyota"
                self._checksum_probe = AUTO_CHECKSUM_PROBE if checksum == "auto" else 0
            elif checksum == "toyota":
                raise ConfigError(
                    "can.checksum",
                    f"{msg_name} has no 8-bit CHECKSUM signal in its last byte",
                )

    def _last_byte(self, cs: BitLayout) -> bool:
        if cs.byte_order == "little_endian":
            return bool(cs.start == 8 * (self._length - 1))
        return bool(cs.start == 8 * (self._length - 1) + 7)

    @property
    def frame_ids(self) -> frozenset[int]:
        return frozenset((self._frame_id,))

    @property
    def extended(self) -> bool:
        return self._extended

    def _length_ok(self, n: int) -> bool:
        if n == self._length:
            return True
        # CAN-FD pads to the next DLC size (12, 16, 20, 24, 32, 48, 64)
        return self._is_fd and self._length < n <= 64 and n >= self._need

    def decode(
        self, arbitration_id: int, data: bytes, time: float, mono: float
    ) -> SpeedSample | Ignition | None:
        if arbitration_id != self._frame_id:
            return None
        st = self.stats
        st.frames += 1
        if not self._length_ok(len(data)):
            st.wrong_length += 1
            st.last_error = (
                f"frame 0x{arbitration_id:X}: {len(data)} bytes, DBC says {self._length}"
            )
            return None
        try:
            for mux_extract, allowed in self._mux_chain:
                if mux_extract(data) not in allowed:
                    st.other_mux += 1
                    return None
            if self._checksum_extract is not None:
                expected = toyota_checksum(arbitration_id, data)
                if self._checksum_extract(data) != expected:
                    st.checksum_errors += 1
                    st.last_error = f"frame 0x{arbitration_id:X}: checksum mismatch"
                    if self._checksum_probe:
                        self._checksum_probe -= 1
                        if not self._checksum_probe:
                            self._checksum_extract = None
                            st.checksum = (
                                f"disabled: first {AUTO_CHECKSUM_PROBE} frames failed the "
                                "Toyota checksum (set can.checksum = 'toyota' to enforce)"
                            )
                    return None
                self._checksum_probe = 0  # one good frame: the algorithm is right
            raw = self._extract(data)
        except Exception as exc:  # a decoder bug or odd payload must not stop a source
            st.decode_errors += 1
            st.last_error = f"frame 0x{arbitration_id:X}: {exc!r}"
            return None
        if raw in self._invalid:
            st.invalid += 1
            return None
        if self._float_fmt is not None:
            nbytes = 4 if self._float_fmt == "<f" else 8
            value = struct.unpack(self._float_fmt, (raw & ((1 << (8 * nbytes)) - 1))
                                  .to_bytes(nbytes, "little"))[0]
            kmh = value * self._scale + self._offset
        else:
            kmh = raw * self._scale + self._offset
        rng = self._range
        if rng is not None and not rng[0] <= kmh <= rng[1]:
            st.invalid += 1
            st.last_error = f"frame 0x{arbitration_id:X}: {kmh:.2f} km/h outside the DBC range"
            return None
        st.decoded += 1
        return self._result(time, kmh, mono)

    # ---- what the decoded value means (the ignition decoder below overrides these)

    FIELD = "can.speed_signal"

    def _unit_factor(self, spec: SignalSpec, signal: str) -> float:
        factor = unit_factor(spec.unit)
        if factor is None:
            raise ConfigError(
                self.FIELD, f"{signal} has unit {spec.unit!r}, not km/h, m/s or mph"
            )
        return factor

    def _result(self, time: float, value: float, mono: float) -> SpeedSample | Ignition | None:
        return SpeedSample(time=time, speed_kmh=value, source="can", mono=mono)


class DbcIgnitionDecoder(DbcSpeedDecoder):
    """Ignition from a DBC signal: any non-zero value is "on". Only changes (and the
    first value) come out, so a 10 Hz status frame costs the engine nothing."""

    FIELD = "can.ignition_signal"

    def __init__(self, spec: SignalSpec) -> None:
        super().__init__(spec, checksum="none")
        self._state: bool | None = None

    def _unit_factor(self, spec: SignalSpec, signal: str) -> float:
        return 1.0

    def _result(self, time: float, value: float, mono: float) -> SpeedSample | Ignition | None:
        on = value != 0
        if on == self._state:
            return None
        self._state = on
        return Ignition(time=time, on=on, mono=mono)


class MultiDecoder:
    """Several signal decoders behind the one ``FrameDecoder`` interface the sources and
    the log reader use: the union of their frame ids, each frame to its owners."""

    def __init__(self, *decoders: Any) -> None:
        self.decoders = decoders
        self._by_id: dict[int, list[Any]] = {}
        for d in decoders:
            for fid in d.frame_ids:
                self._by_id.setdefault(fid, []).append(d)
        self.stats = decoders[0].stats

    @property
    def frame_ids(self) -> frozenset[int]:
        return frozenset(self._by_id)

    @property
    def extended(self) -> bool:
        return any(d.extended for d in self.decoders)

    def decode(self, arbitration_id: int, data: bytes, time: float, mono: float) -> Any:
        for d in self._by_id.get(arbitration_id, ()):
            out = d.decode(arbitration_id, data, time, mono)
            if out is not None:
                return out
        return None

