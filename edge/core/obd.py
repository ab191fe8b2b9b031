"""OBD-II over CAN (ISO 15765-4, 11-bit IDs, single frames only). Pure.

Requests go to the functional address 0x7DF as an ISO-TP single frame
``[len, 0x01, pid...] + 0x55 padding``; ECUs answer from 0x7E8-0x7EF with
``[len, 0x41, pid, value..., pid, value...]`` or a negative response
``[0x03, 0x7F, 0x01, NRC]``.

``ObdPoller`` decides what to ask and when (time is an argument): PID 0x0D (speed) at
the configured interval, RPM (0x0C) and coolant (0x05) less often for telemetry. It puts
at most ``max_pids`` PIDs in one request (default 1: many ECUs reject more, some accept
up to 6) and only as many as fit a single-frame answer (7 bytes), so no ISO-TP flow
control is ever needed. A request unanswered within ``timeout_s`` or answered negatively
backs its PIDs off exponentially (capped); a multi-PID request that fails drops
``max_pids`` to 1 for good (the ECU told us what it accepts). A PID the ECU reports as
unsupported (NRC 0x12/0x31) is retried only at the cap.

Every value becomes a sample the engine takes (``to_sample``): speed a ``SpeedSample``
(source "obd"), engine speed and coolant temperature ``SignalSample``s under their COVESA
VSS names. The live source and log replay (``ObdDecoder``) share that one mapping, so a
replayed OBD log gives the telemetry the live daemon gave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.model import SignalSample, SpeedSample

REQUEST_ID = 0x7DF
RESPONSE_IDS = frozenset(range(0x7E8, 0x7F0))
PAD = 0x55
MAX_PIDS_PER_REQUEST = 6

PID_SPEED = 0x0D
PID_RPM = 0x0C
PID_COOLANT = 0x05

# bytes of data each PID answers with
PID_LENGTHS: dict[int, int] = {PID_SPEED: 1, PID_RPM: 2, PID_COOLANT: 1}
NRC_UNSUPPORTED = frozenset({0x11, 0x12, 0x31})

# PIDs that reach telemetry as signals, by their COVESA VSS names
SIGNAL_NAMES: dict[int, str] = {
    PID_RPM: "Vehicle.Powertrain.CombustionEngine.Speed",
    PID_COOLANT: "Vehicle.Powertrain.CombustionEngine.ECT",
}


def request_frame(pids: Sequence[int]) -> bytes:
    """The 8-byte single frame asking service 0x01 for ``pids`` (1 to 6)."""
    if not 1 <= len(pids) <= MAX_PIDS_PER_REQUEST:
        raise ValueError(f"1 to {MAX_PIDS_PER_REQUEST} PIDs per request, got {len(pids)}")
    body = bytes([1 + len(pids), 0x01, *pids])
    return body + bytes([PAD]) * (8 - len(body))


@dataclass(frozen=True, slots=True, kw_only=True)
class ObdValue:
    pid: int
    value: float  # km/h, rpm or degrees C
    ecu: int  # responding arbitration ID


@dataclass(frozen=True, slots=True, kw_only=True)
class ObdNegative:
    service: int
    nrc: int
    ecu: int


def pid_value(pid: int, raw: bytes) -> float:
    if pid == PID_SPEED:
        return float(raw[0])
    if pid == PID_RPM:
        return ((raw[0] << 8) | raw[1]) / 4.0
    if pid == PID_COOLANT:
        return float(raw[0] - 40)
    raise KeyError(pid)


def parse_response(arbitration_id: int, data: bytes) -> list[ObdValue] | ObdNegative | None:
    """Values of a service 0x01 single-frame response, a negative response, or None.

    None means "not an OBD response we understand" (other ID, multi-frame, other
    service, truncated); callers count it.
    """
    if arbitration_id not in RESPONSE_IDS or len(data) < 2:
        return None
    pci = data[0]
    if pci >> 4 != 0:  # not a single frame
        return None
    length = pci & 0x0F
    if length < 1 or length > len(data) - 1:
        return None
    payload = data[1 : 1 + length]
    if payload[0] == 0x7F:
        if len(payload) < 3:
            return None
        return ObdNegative(service=payload[1], nrc=payload[2], ecu=arbitration_id)
    if payload[0] != 0x41:
        return None
    values: list[ObdValue] = []
    i = 1
    while i < len(payload):
        pid = payload[i]
        size = PID_LENGTHS.get(pid)
        if size is None or i + 1 + size > len(payload):
            break  # unknown PID: its length is unknown, the rest cannot be split
        values.append(
            ObdValue(pid=pid, value=pid_value(pid, payload[i + 1 : i + 1 + size]),
                     ecu=arbitration_id)
        )
        i += 1 + size
    return values or None


@dataclass(slots=True)
class _PidState:
    period: float
    due: float = 0.0
    failures: int = 0
    unsupported: bool = False


@dataclass(slots=True)
class ObdStats:
    requests: int = 0
    responses: int = 0
    timeouts: int = 0
    negative: int = 0
    unsupported: list[int] = field(default_factory=list)
    ignored: int = 0  # frames from 0x7E8-0x7EF we could not use
    max_pids: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ObdPoller:
    """When to ask which PIDs, and what the answers mean. Pure: pass ``mono`` in."""

    frame_ids = RESPONSE_IDS  # the frames to hand to ``on_frame``
    extended = False  # 11-bit identifiers

    def __init__(
        self,
        *,
        interval_s: float = 0.5,
        timeout_s: float = 0.25,
        max_pids: int = 1,
        backoff_max_s: float = 30.0,
        telemetry: bool = True,
    ) -> None:
        if not 1 <= max_pids <= MAX_PIDS_PER_REQUEST:
            raise ValueError(f"max_pids must be 1-{MAX_PIDS_PER_REQUEST}")
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self.stats = ObdStats(max_pids=max_pids)
        self._pids: dict[int, _PidState] = {PID_SPEED: _PidState(period=interval_s)}
        if telemetry:
            self._pids[PID_RPM] = _PidState(period=max(interval_s * 2, 1.0))
            self._pids[PID_COOLANT] = _PidState(period=max(interval_s * 20, 10.0))
        self._outstanding: tuple[int, ...] = ()
        self._sent_at = 0.0
        self.last: dict[int, ObdValue] = {}
        self.last_mono: dict[int, float] = {}

    @property
    def outstanding(self) -> tuple[int, ...]:
        return self._outstanding

    def _backoff(self, state: _PidState, mono: float) -> None:
        state.failures += 1
        if state.unsupported:
            delay = self.backoff_max_s
        else:
            delay = min(self.backoff_max_s, state.period * 2 ** state.failures)
        state.due = mono + delay

    def poll(self, mono: float) -> bytes | None:
        """The request frame to send now, or None. Call it often (see ``next_wakeup``)."""
        if self._outstanding:
            if mono - self._sent_at < self.timeout_s:
                return None
            self.stats.timeouts += 1
            self._fail(self._outstanding, mono, unsupported=False)
        due = [pid for pid, st in self._pids.items() if st.due <= mono]
        if not due:
            return None
        # most overdue first, the others handicapped by one speed interval: speed goes
        # first unless another PID has waited an interval longer (no starvation)
        due.sort(key=lambda p: (
            self._pids[p].due + (0.0 if p == PID_SPEED else self.interval_s), p))
        chosen: list[int] = []
        answer = 1  # 0x41
        for pid in due:
            size = 1 + PID_LENGTHS[pid]
            if len(chosen) >= self.stats.max_pids or answer + size > 7:
                break
            chosen.append(pid)
            answer += size
        self._outstanding = tuple(chosen)
        self._sent_at = mono
        self.stats.requests += 1
        return request_frame(chosen)

    def next_wakeup(self, mono: float) -> float:
        """Seconds until ``poll`` may have something to do."""
        if self._outstanding:
            return max(0.0, self._sent_at + self.timeout_s - mono)
        return max(0.0, min(st.due for st in self._pids.values()) - mono)

    def _fail(self, pids: tuple[int, ...], mono: float, *, unsupported: bool) -> None:
        if len(pids) > 1 and self.stats.max_pids > 1:
            self.stats.max_pids = 1  # the ECU does not take multi-PID requests
            for pid in pids:
                self._pids[pid].due = mono  # retry at once, one by one
        else:
            for pid in pids:
                state = self._pids[pid]
                if unsupported and not state.unsupported:
                    state.unsupported = True
                    self.stats.unsupported.append(pid)
                self._backoff(state, mono)
        self._outstanding = ()

    def on_frame(
        self, arbitration_id: int, data: bytes, mono: float
    ) -> list[ObdValue]:
        """Feed a received frame; returns the values it carried (possibly none)."""
        parsed = parse_response(arbitration_id, data)
        if parsed is None:
            self.stats.ignored += 1
            return []
        if isinstance(parsed, ObdNegative):
            self.stats.negative += 1
            if parsed.service == 0x01 and self._outstanding:
                self._fail(self._outstanding, mono, unsupported=parsed.nrc in NRC_UNSUPPORTED)
            return []
        self.stats.responses += 1
        answered = {v.pid for v in parsed}
        for pid in answered:
            state = self._pids.get(pid)
            if state is not None:
                state.failures = 0
                state.unsupported = False
                state.due = max(state.due, self._sent_at) + state.period
                if state.due <= mono:  # fell behind: do not burst to catch up
                    state.due = mono + state.period
        if self._outstanding and answered.issuperset(self._outstanding):
            self._outstanding = ()
        for v in parsed:
            self.last[v.pid] = v
            self.last_mono[v.pid] = mono
        return parsed

    def telemetry(self, mono: float | None = None, max_age_s: float = 10.0) -> dict[str, float]:
        """The last RPM and coolant temperature; with ``mono``, only values younger
        than ``max_age_s`` (an ECU that stopped answering is not reported forever)."""
        out: dict[str, float] = {}
        for pid, key in ((PID_RPM, "rpm"), (PID_COOLANT, "coolant_c")):
            v = self.last.get(pid)
            if v is None:
                continue
            if mono is not None and mono - self.last_mono.get(pid, -1e18) > max_age_s:
                continue
            out[key] = v.value
        return out


def to_sample(value: ObdValue, time: float, mono: float) -> SpeedSample | SignalSample | None:
    """The sample an OBD value is for the engine: speed, or a telemetry signal."""
    if value.pid == PID_SPEED:
        return SpeedSample(time=time, speed_kmh=value.value, source="obd", mono=mono)
    name = SIGNAL_NAMES.get(value.pid)
    if name is None:
        return None
    return SignalSample(time=time, name=name, value=value.value, mono=mono)


class ObdDecoder:
    """Samples from recorded OBD responses (log replay: no requests are sent)."""

    frame_ids = RESPONSE_IDS
    extended = False

    def __init__(self) -> None:
        self.stats = ObdStats()

    def decode_all(self, arbitration_id: int, data: bytes, time: float, mono: float
                   ) -> list[SpeedSample | SignalSample]:
        """Every sample one response carries (a multi-PID answer carries several)."""
        parsed = parse_response(arbitration_id, data)
        if not isinstance(parsed, list):
            self.stats.ignored += 1
            return []
        self.stats.responses += 1
        return [s for s in (to_sample(v, time, mono) for v in parsed) if s is not None]
