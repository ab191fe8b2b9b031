"""Configuration: one TOML file, validated once into frozen objects.

Every key is declared below; an unknown key is an error, not silently ignored. Errors
name the field with its dotted path (``uplink.port``) and the reason. Relative paths
are resolved against the directory of the config file.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from edge.errors import ConfigError

THING_RE = re.compile(r"^[A-Za-z0-9_:\-]{1,128}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class GnssConfig:
    port: str | None = None  # serial device; None disables the GNSS source
    baud: int = 9600
    max_hdop: float = 5.0  # fixes with a worse HDOP are not used for decisions
    max_jump_mps: float = 90.0  # implied speed between fixes above this is a jump
    confirm_fixes: int = 3  # consistent fixes needed to accept a jumped-to place
    date: str | None = None  # YYYY-MM-DD for GGA-only streams that never give a date
    reopen_max_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CanConfig:
    interface: Literal["none", "socketcan", "slcan", "virtual"] = "none"
    channel: str = "can0"
    bitrate: int = 500000
    fd: bool = False
    mode: Literal["dbc", "obd"] = "dbc"
    dbc: Path | None = None
    speed_signal: str | None = None  # "MESSAGE.SIGNAL"
    ignition_signal: str | None = None  # "MESSAGE.SIGNAL"; non-zero = on: trips follow it
    obd_interval_s: float = 0.5
    stale_s: float = 1.0  # CAN speed older than this -> fall back to GNSS speed
    disagree_kmh: float = 15.0
    disagree_s: float = 10.0
    queue_max: int = 2000  # frames between bus and decoder; when full the oldest is dropped
    reopen_max_s: float = 30.0
    checksum: Literal["auto", "toyota", "none"] = "auto"  # verify the DBC's CHECKSUM signal
    obd_max_pids: int = 1  # PIDs per OBD request (1-6): many ECUs reject more than one
    obd_timeout_s: float = 0.25
    slcan_open_delay_s: float = 2.0  # python-can's pause after opening a USB serial port


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeedRuleConfig:
    limit_kmh: float | None = None  # default limit; zones' maxspeed override it
    tolerance_kmh: float = 0.0
    tolerance_pct: float = 0.0
    min_duration_s: float = 3.0
    recovery_kmh: float = 3.0  # must drop this far below the threshold to end
    end_after_s: float = 3.0
    gap_s: float = 10.0
    limit_policy: Literal["lowest", "zone", "default"] = "lowest"
    # which speed the rules believe when CAN and GNSS disagree (can.disagree_kmh for
    # can.disagree_s): "fallback" GNSS until they agree again, "can", or "gnss" always
    source_policy: Literal["can", "gnss", "fallback"] = "fallback"


@dataclass(frozen=True, slots=True, kw_only=True)
class GeofenceRuleConfig:
    hysteresis_m: float | None = None  # None: derived from HDOP
    debounce_s: float = 2.0
    gap_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PoiRuleConfig:
    cooldown_s: float = 3600.0
    max_per_hour: int = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class TripRuleConfig:
    start_kmh: float = 5.0
    start_s: float = 5.0
    end_s: float = 300.0
    # a restart (power glitch, kill) within this much drive time continues the trip;
    # a longer one ends it with reason "power_loss"
    resume_gap_s: float = 300.0
    harsh_accel_kmhs: float = 12.0  # km/h per second, over >= 1 s
    harsh_brake_kmhs: float = -16.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RulesConfig:
    zones: Path | None = None
    speed: SpeedRuleConfig = field(default_factory=SpeedRuleConfig)
    geofence: GeofenceRuleConfig = field(default_factory=GeofenceRuleConfig)
    poi: PoiRuleConfig = field(default_factory=PoiRuleConfig)
    trip: TripRuleConfig = field(default_factory=TripRuleConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoadsConfig:
    """Posted limits of the road (``edge.roads``): an index built by ``edge roads import``."""

    index: Path | None = None  # None: no road limits
    priority: Literal["zone>road>default", "road>zone>default", "lowest"] = "zone>road>default"
    radius_m: float = 25.0  # map-matching candidates within radius_m + hdop_radius_m x HDOP
    hdop_radius_m: float = 5.0
    max_radius_m: float = 80.0
    sigma_m: float = 5.0
    heading_sigma_deg: float = 30.0
    switch_margin: float = 1.5  # log-likelihood lead before the matched road changes
    cache_kb: int = 2048  # SQLite page cache for the index


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    interval_s: float = 1.0
    batch_max: int = 60  # records per telemetry publish


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkConfig:
    kind: Literal["iotcore", "greengrass", "mqtt", "file"] = "mqtt"
    endpoint: str = "localhost"
    port: int | None = None  # default: 8883 with TLS, 1883 without
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    client_id: str | None = None  # default: the thing name
    path: Path | None = None  # for kind = "file"
    protocol: Literal[5, 311] = 5
    tls: bool | None = None  # default: on when cert/ca given
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    backoff_max_s: float = 60.0
    compression: Literal["none", "gzip", "zstd"] = "none"  # telemetry batches (MQTT 5 only)
    window: int = 64  # publishes awaiting their PUBACK at once
    probe_s: float = 0.5  # while down, look for the broker's port this often (0: off)

    @property
    def uses_tls(self) -> bool:
        """TLS on: always to IoT Core; else as ``tls`` says, by default when cert/ca given."""
        if self.kind == "iotcore":
            return True
        return self.tls if self.tls is not None else (self.cert is not None or self.ca is not None)

    @property
    def broker_port(self) -> int:
        """The broker's port: ``port``, by default 8883 with TLS and 1883 without (the
        one place that default is decided)."""
        return self.port or (8883 if self.uses_tls else 1883)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxConfig:
    path: Path = Path("outbox.db")
    max_mb: float = 64.0
    alert_sync: Literal["full", "normal"] = "full"
    # telemetry loss window at a power cut (an fsync at least this often)
    sync_interval_s: float = 5.0
    trip_max_mb: float | None = None  # per-lane quotas (None: only max_mb applies)
    telemetry_max_mb: float | None = None
    health_max_mb: float | None = 4.0
    # rows older than this are dropped (counted); alerts never expire
    trip_ttl_h: float | None = None
    telemetry_ttl_h: float | None = None
    health_ttl_h: float | None = 24.0
    # space held beside the outbox for alerts only (released to them on a full disk)
    reserve_mb: float = 0.25
    # below this free space: WAL checkpointed every commit, lower lanes stop growing
    min_free_mb: float = 0.5
    # encryption at rest of payloads and rule state (edge.seal); key files: 32 bytes, 0600
    encryption: Literal["none", "aes-256-gcm"] = "none"
    key_file: Path | None = None
    old_key_files: tuple[Path, ...] = ()  # still read (rows sealed before a rotation)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    interval_s: float = 60.0
    path: Path | None = None  # status file read by `edge status`; default beside the outbox
    group: str | None = None  # this group may read the status file too (0640)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"
    status_interval_s: float = 60.0  # a one-line summary (fixes, speed, published) this often
    events: bool = True  # log every alert and trip edge at info level


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    thing: str
    gnss: GnssConfig = field(default_factory=GnssConfig)
    can: CanConfig = field(default_factory=CanConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    roads: RoadsConfig = field(default_factory=RoadsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None  # the file this came from (not a TOML key)

    @property
    def health_path(self) -> Path:
        return self.health.path or self.outbox.path.with_name("health.json")


# the top-level fields a config update compares and applies (``thing`` and the sections;
# ``source`` says where a config came from and is no setting)
SECTIONS: tuple[str, ...] = tuple(f.name for f in fields(Config) if f.name != "source")


def changed_sections(old: Config, new: Config) -> frozenset[str]:
    """Top-level config fields that differ (``uplink`` usually means reconnect)."""
    return frozenset(f for f in SECTIONS if getattr(old, f) != getattr(new, f))


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file. Raises ConfigError naming the field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"{p} is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"{p} is not valid TOML: {exc}") from exc
    return config_from_dict(data, base=p.resolve().parent, source=p)


def config_from_dict(
    data: Mapping[str, Any], *, base: Path | None = None, source: Path | None = None
) -> Config:
    base = base or Path.cwd()
    if "source" in data:
        raise ConfigError("source", "unknown key")
    cfg: Config = _build(Config, data, "", base)
    cfg = dataclasses.replace(cfg, source=source)
    if not cfg.outbox.path.is_absolute():
        cfg = dataclasses.replace(
            cfg, outbox=dataclasses.replace(cfg.outbox, path=base / cfg.outbox.path)
        )
    _check(cfg)
    return cfg


# numbers that must be > 0 (a field left unset, None, is not checked)
POSITIVE = (
    "gnss.baud",
    "gnss.max_hdop",
    "gnss.max_jump_mps",
    "gnss.reopen_max_s",
    "can.obd_interval_s",
    "can.obd_timeout_s",
    "can.stale_s",
    "can.disagree_s",
    "can.reopen_max_s",
    "can.bitrate",
    "rules.speed.limit_kmh",
    "rules.speed.gap_s",
    "rules.geofence.gap_s",
    "rules.trip.start_kmh",
    "rules.trip.end_s",
    "rules.trip.harsh_accel_kmhs",
    "telemetry.interval_s",
    "outbox.max_mb",
    "uplink.backoff_max_s",
    "log.status_interval_s",
    "health.interval_s",
)
# numbers that must be >= 0
NON_NEGATIVE = (
    "can.disagree_kmh",
    "can.slcan_open_delay_s",
    "rules.speed.tolerance_kmh",
    "rules.speed.tolerance_pct",
    "rules.speed.min_duration_s",
    "rules.speed.recovery_kmh",
    "rules.speed.end_after_s",
    "rules.geofence.hysteresis_m",
    "rules.geofence.debounce_s",
    "rules.poi.cooldown_s",
    "rules.poi.max_per_hour",
    "rules.trip.start_s",
    "rules.trip.resume_gap_s",
    "outbox.sync_interval_s",
    "outbox.reserve_mb",
    "outbox.min_free_mb",
    "uplink.probe_s",
)


def _check_signs(cfg: Config) -> None:
    for path in POSITIVE:
        value = _field(cfg, path)
        if value is not None and value <= 0:
            raise ConfigError(path, "must be positive")
    for path in NON_NEGATIVE:
        value = _field(cfg, path)
        if value is not None and value < 0:
            raise ConfigError(path, "must not be negative")


def _field(cfg: Config, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _check(cfg: Config) -> None:
    _check_signs(cfg)
    if not THING_RE.match(cfg.thing):
        raise ConfigError(
            "thing", "must be 1-128 characters of letters, digits, '_', '-' or ':'"
        )
    if cfg.gnss.date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", cfg.gnss.date):
        raise ConfigError("gnss.date", "must be YYYY-MM-DD")
    if cfg.gnss.date is not None:
        import datetime  # local: only this check needs it

        try:
            datetime.date.fromisoformat(cfg.gnss.date)
        except ValueError:
            raise ConfigError("gnss.date", "is not a valid date") from None
    if cfg.gnss.port is not None and not cfg.gnss.port:
        raise ConfigError("gnss.port", "must not be empty (leave it out to disable GNSS)")
    if cfg.gnss.confirm_fixes < 1:
        raise ConfigError("gnss.confirm_fixes", "must be at least 1")
    if cfg.can.interface != "none" and cfg.can.mode == "dbc":
        if cfg.can.dbc is None:
            raise ConfigError("can.dbc", "required when can.interface is set and mode is 'dbc'")
        if not cfg.can.speed_signal or cfg.can.speed_signal.count(".") != 1:
            raise ConfigError("can.speed_signal", "must be 'MESSAGE.SIGNAL'")
    if cfg.can.queue_max < 1:
        raise ConfigError("can.queue_max", "must be at least 1")
    if not 1 <= cfg.can.obd_max_pids <= 6:
        raise ConfigError("can.obd_max_pids", "must be between 1 and 6")
    if cfg.can.ignition_signal is not None and cfg.can.ignition_signal.count(".") != 1:
        raise ConfigError("can.ignition_signal", "must be 'MESSAGE.SIGNAL'")
    if cfg.can.ignition_signal is not None and cfg.can.mode != "dbc":
        raise ConfigError("can.ignition_signal", "needs mode = 'dbc' and a DBC")
    if cfg.rules.trip.harsh_brake_kmhs >= 0:
        raise ConfigError("rules.trip.harsh_brake_kmhs", "must be negative")
    if not 1 <= cfg.telemetry.batch_max <= 1000:
        raise ConfigError("telemetry.batch_max", "must be between 1 and 1000")
    if cfg.uplink.kind == "file" and cfg.uplink.path is None:
        raise ConfigError("uplink.path", "required when uplink.kind = 'file'")
    if cfg.uplink.port is not None and not 0 < cfg.uplink.port < 65536:
        raise ConfigError("uplink.port", "must be 1-65535")
    if cfg.uplink.kind == "iotcore":
        for name in ("cert", "key"):
            if getattr(cfg.uplink, name) is None:
                raise ConfigError(f"uplink.{name}", "required when uplink.kind = 'iotcore'")
    if (cfg.uplink.cert is None) != (cfg.uplink.key is None):
        raise ConfigError("uplink.key" if cfg.uplink.key is None else "uplink.cert",
                          "cert and key go together")
    for name in ("trip_max_mb", "telemetry_max_mb", "health_max_mb",
                 "trip_ttl_h", "telemetry_ttl_h", "health_ttl_h"):
        value = getattr(cfg.outbox, name)
        if value is not None and value <= 0:
            raise ConfigError(f"outbox.{name}", "must be positive (leave it out for no limit)")
    if cfg.outbox.encryption != "none":
        if cfg.outbox.key_file is None:
            raise ConfigError("outbox.key_file", "required when outbox.encryption is set"
                              " (make one with `edge outbox keygen --out FILE`)")
        import importlib.util  # local: only this check needs it

        if importlib.util.find_spec("cryptography") is None:
            raise ConfigError("outbox.encryption", f"{cfg.outbox.encryption!r} needs the"
                              " cryptography package (pip install 'vehicle-edge[crypto]')")
    elif cfg.outbox.key_file is not None or cfg.outbox.old_key_files:
        raise ConfigError("outbox.key_file", "set outbox.encryption = 'aes-256-gcm' too"
                          " (a key without encryption would silently store plaintext)")
    if cfg.health.group is not None:
        from edge.private import group_id

        try:
            group_id(cfg.health.group)
        except KeyError:
            raise ConfigError("health.group", f"no group {cfg.health.group!r}") from None
    if not 1 <= cfg.uplink.window <= 100:
        raise ConfigError("uplink.window", "must be between 1 and 100")
    if cfg.uplink.compression == "zstd":
        import importlib.util  # local: only this check needs it

        if importlib.util.find_spec("zstandard") is None:
            raise ConfigError("uplink.compression", "'zstd' needs the zstandard package")
    for name in ("radius_m", "hdop_radius_m", "max_radius_m", "sigma_m", "heading_sigma_deg",
                 "switch_margin", "cache_kb"):
        if getattr(cfg.roads, name) <= 0:
            raise ConfigError(f"roads.{name}", "must be positive")


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             Path: "a path string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, where: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where, base)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        shown = ", ".join(repr(c) for c in choices)
        raise ConfigError(where, f"must be one of {shown}, got {value!r}")
    if origin is tuple:
        (item, _more) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(where, f"must be a list, got {type(value).__name__} {value!r}")
        return tuple(_convert(item, v, f"{where}[{i}]", base) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(where, f"must be a table, got {type(value).__name__}")
        return _build(tp, value, where + ".", base)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str) and value:
            p = Path(value).expanduser()
            return p if p.is_absolute() else base / p
    got = type(value).__name__
    raise ConfigError(where, f"must be {_type_name(tp)}, got {got} {value!r}")


def _build(cls: Any, data: Mapping[str, Any], prefix: str, base: Path) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{key}", f"unknown key (known keys: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        where = f"{prefix}{name}"
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], where, base)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(where, "required key is missing")
        elif isinstance(f.default, Path):
            kwargs[name] = f.default if f.default.is_absolute() else base / f.default
    return cls(**kwargs)
