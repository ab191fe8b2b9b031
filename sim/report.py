"""Draw a drive: the track coloured by speed with zones, POIs and events; speed over time.

Offline by design (no map tiles): the map is drawn in a local metric frame around the
drive, with a scale in metres. ``render`` takes the events as plain dicts
(``{"type": ..., "ts": ms, "lat": ..., "lon": ..., ...}``, i.e. published payloads),
so it draws events from any source; ``events_for`` gets them by replaying the drive
through the engine (``edge.commands.replay.replay_events``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from edge.config import Config
from sim.drive import Drive, iter_timeline, load_drive, nmea_checksum_ok, parse_candump

EARTH_R = 6371008.8
EVENT_STYLE: Mapping[str, tuple[str, str]] = {  # type -> (marker, colour)
    "overspeed": ("v", "#d62728"),
    "geofence": ("s", "#1f77b4"),
    "poi": ("*", "#ff7f0e"),
    "trip": ("o", "#2ca02c"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackPoint:
    t: float
    lat: float
    lon: float
    speed_kmh: float


def _nmea_deg(value: str, hemi: str) -> float | None:
    if not value or "." not in value:
        return None
    dot = value.index(".")
    try:
        deg = float(value[: dot - 2]) + float(value[dot - 2 :]) / 60.0
    except ValueError:
        return None
    return -deg if hemi in ("S", "W") else deg


def track_of(drive: Drive) -> list[TrackPoint]:
    """Valid RMC positions of the drive (checksum-valid, status A)."""
    out: list[TrackPoint] = []
    for t, kind, line in iter_timeline(drive):
        if kind != "gnss" or line[3:6] != b"RMC" or not nmea_checksum_ok(line):
            continue
        f = line[1 : line.rfind(b"*")].decode("ascii", "replace").split(",")
        if len(f) < 8 or f[2] != "A":
            continue
        lat, lon = _nmea_deg(f[3], f[4]), _nmea_deg(f[5], f[6])
        if lat is None or lon is None:
            continue
        try:
            kmh = float(f[7]) * 1.852 if f[7] else 0.0
        except ValueError:
            kmh = 0.0
        out.append(TrackPoint(t=t, lat=lat, lon=lon, speed_kmh=kmh))
    return out


def can_speed_of(drive: Drive, config: Config) -> list[tuple[float, float]]:
    """(t, km/h) from the CAN speed signal of the config, when it has one."""
    if drive.can is None or config.can.dbc is None or not config.can.speed_signal:
        return []
    import cantools

    db = cantools.database.load_file(str(config.can.dbc))
    if not isinstance(db, cantools.database.can.Database):
        return []
    msg_name, sig = config.can.speed_signal.split(".", 1)
    msg = db.get_message_by_name(msg_name)
    out: list[tuple[float, float]] = []
    for t, kind, line in iter_timeline(drive):
        if kind != "can":
            continue
        fr = parse_candump(line)
        if fr is None or fr.error or fr.arbitration_id != msg.frame_id:
            continue
        try:
            decoded = cast(Mapping[str, Any], msg.decode(fr.data, decode_choices=False))
            out.append((t, float(decoded[sig])))
        except Exception:
            continue
    return out


def events_for(drive: Path, config: Config) -> list[dict[str, Any]]:
    """The alert and trip events the engine decides for ``drive``, as payload dicts, and
    the telemetry records that carry a posted road limit (``[roads]`` configured)."""
    from edge.commands.replay import replay_events

    out = []
    for env in replay_events(drive, config):
        if env.type in EVENT_STYLE or "speed_limit_source" in env.body:
            out.append(dict(env.payload()))
    return out


def posted_limit_series(events: Iterable[Mapping[str, Any]], t0: float
                        ) -> tuple[list[float], list[float]]:
    """(seconds since ``t0``, km/h) of the matched road's limit over time, from the
    telemetry records; NaN where no limit applies."""
    ts: list[float] = []
    kmh: list[float] = []
    for e in events:
        if e.get("type") == "telemetry" and "speed_limit_source" in e:
            lim = e.get("speed_limit_kmh")
            ts.append(float(e["ts"]) / 1000 - t0)
            kmh.append(float(lim) if isinstance(lim, int | float) else float("nan"))
    return ts, kmh


class _Frame:
    """Local metres around a reference point (east, north)."""

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0, self.lon0 = lat0, lon0
        self.kx = math.radians(1) * EARTH_R * math.cos(math.radians(lat0))
        self.ky = math.radians(1) * EARTH_R

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        return (lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky


def _load_zones(path: Path | None) -> list[Mapping[str, Any]]:
    if path is None or not path.is_file():
        return []
    doc = json.loads(path.read_text("utf-8"))
    return [f for f in doc.get("features", []) if isinstance(f, Mapping)]


def _limit_at(lon: float, lat: float, speed_zones: Sequence[tuple[Any, float]],
              default: float | None) -> float | None:
    from shapely.geometry import Point

    p = Point(lon, lat)
    limits = [lim for geom, lim in speed_zones if geom.covers(p)]
    if limits:
        return min(limits)
    return default


def _label(ev: Mapping[str, Any]) -> str:
    kind = str(ev.get("type"))
    what = ev.get("phase") or ev.get("transition") or ""
    name = ev.get("fence") or ev.get("poi") or ""
    return " ".join(str(x) for x in (kind, what, name) if x)


def render(drive: Drive, config: Config, events: Iterable[Mapping[str, Any]], out: Path, *,
           title: str | None = None) -> Path:
    """Write the report PNG to ``out`` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle
    from matplotlib.patches import Polygon as MplPolygon
    from shapely.geometry import shape

    track = track_of(drive)
    can_speed = can_speed_of(drive, config)
    events = list(events)
    evs = [e for e in events if e.get("type") in EVENT_STYLE]
    zones = _load_zones(config.rules.zones)
    if track:
        frame = _Frame(track[0].lat, track[0].lon)
    else:
        frame = _Frame(48.0, 11.0)
    t0 = track[0].t if track else (can_speed[0][0] if can_speed else 0.0)

    fig = plt.figure(figsize=(14, 10), dpi=100)
    grid = fig.add_gridspec(2, 1, height_ratios=(2.2, 1.0), hspace=0.25)
    ax = fig.add_subplot(grid[0])
    axs = fig.add_subplot(grid[1])

    # zones
    speed_zones: list[tuple[Any, float]] = []
    for f in zones:
        props = f.get("properties") or {}
        geom = f.get("geometry") or {}
        kind = props.get("kind", "poi" if "offer" in props else "fence")
        name = str(props.get("name", props.get("id", "")))
        maxspeed = props.get("maxspeed")
        try:
            if geom.get("type") in ("Polygon", "MultiPolygon"):
                shp = shape(geom)
                if isinstance(maxspeed, int | float):
                    speed_zones.append((shp, float(maxspeed)))
                polys = [shp] if shp.geom_type == "Polygon" else list(shp.geoms)
                colour = "#9467bd" if kind == "speed" else "#1f77b4"
                for poly in polys:
                    pts = [frame.xy(x, y) for x, y in poly.exterior.coords]
                    ax.add_patch(MplPolygon(pts, closed=True, facecolor=colour, alpha=0.15,
                                            edgecolor=colour, lw=1.5))
                cx, cy = frame.xy(shp.centroid.x, shp.centroid.y)
                label = name
                if maxspeed is not None and str(maxspeed) not in name:
                    label += f" ({maxspeed} km/h)"
                ax.annotate(label, (cx, cy), color=colour, ha="center", fontsize=9)
            elif geom.get("type") == "Point":
                x, y = frame.xy(*geom["coordinates"][:2])
                r = float(props.get("radius_m", 25.0))
                ax.add_patch(Circle((x, y), r, facecolor="#ff7f0e", alpha=0.15,
                                    edgecolor="#ff7f0e", lw=1.5))
                ax.plot([x], [y], marker="P", color="#ff7f0e", ms=9)
                ax.annotate(name, (x, y + r + 5), color="#ff7f0e", ha="center", fontsize=9)
            elif geom.get("type") == "LineString":
                xs, ys = zip(*(frame.xy(*c[:2]) for c in geom["coordinates"]), strict=True)
                ax.plot(xs, ys, color="#9467bd", lw=4, alpha=0.3)
        except (KeyError, TypeError, ValueError):
            continue

    # track coloured by speed
    if len(track) >= 2:
        pts = [frame.xy(p.lon, p.lat) for p in track]
        segs = [[pts[i], pts[i + 1]] for i in range(len(pts) - 1)]
        speeds = [(track[i].speed_kmh + track[i + 1].speed_kmh) / 2 for i in range(len(segs))]
        lc = LineCollection(segs, cmap="viridis", linewidths=3)
        lc.set_array(speeds)
        ax.add_collection(lc)
        fig.colorbar(lc, ax=ax, label="GNSS speed (km/h)", shrink=0.8)
        ax.plot(*pts[0], marker="o", color="black", ms=7)
        ax.annotate("start", pts[0], xytext=(6, 6), textcoords="offset points", fontsize=9)
    for ev in evs:
        lat, lon = ev.get("lat"), ev.get("lon")
        if not isinstance(lat, int | float) or not isinstance(lon, int | float):
            continue
        marker, colour = EVENT_STYLE[str(ev["type"])]
        x, y = frame.xy(float(lon), float(lat))
        ax.plot([x], [y], marker=marker, color=colour, ms=11, mec="black", mew=0.8, zorder=5)
        ax.annotate(_label(ev), (x, y), xytext=(7, -12), textcoords="offset points",
                    fontsize=8, color=colour, zorder=6)
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.set_xlabel("east (m)")
    ax.set_ylabel("north (m)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"{drive.name}: {len(track)} fixes, {len(evs)} events"
                 + (f" — {drive.notes}" if drive.notes else ""), fontsize=11)
    handles = [Line2D([], [], marker=m, color=c, ls="", ms=9, label=k)
               for k, (m, c) in EVENT_STYLE.items()]
    ax.legend(handles=handles, loc="best", fontsize=9)

    # speed against time, limits shaded
    if track:
        ts = [p.t - t0 for p in track]
        default = config.rules.speed.limit_kmh
        limits = [_limit_at(p.lon, p.lat, speed_zones, default) for p in track]
        lim_vals = [lim if lim is not None else float("nan") for lim in limits]
        tol = config.rules.speed.tolerance_kmh
        axs.fill_between(ts, 0, lim_vals, step="post", color="#2ca02c", alpha=0.12,
                         label="within the limit")
        axs.fill_between(ts, lim_vals, [v + tol + lim * config.rules.speed.tolerance_pct / 100
                                        for v, lim in zip(lim_vals, lim_vals, strict=True)],
                         step="post", color="#ffbf00", alpha=0.25, label="tolerance")
        axs.step(ts, lim_vals, where="post", color="#d62728", lw=1.2, label="limit")
        p_ts, pkmh = posted_limit_series(events, t0)
        if p_ts:  # [roads]: the posted limit of the matched road, as the engine applied it
            axs.step(p_ts, pkmh, where="post", color="#8c564b", lw=1.6, ls="--",
                     label="posted limit (matched road)")
        axs.plot(ts, [p.speed_kmh for p in track], color="#1f77b4", lw=1, label="GNSS speed")
    if can_speed:
        axs.plot([t - t0 for t, _ in can_speed], [v for _, v in can_speed], color="black",
                 lw=0.8, alpha=0.8, label="CAN speed")
    for ev in evs:
        ts_ms = ev.get("ts")
        if isinstance(ts_ms, int | float):
            _, colour = EVENT_STYLE[str(ev["type"])]
            axs.axvline(ts_ms / 1000.0 - t0, color=colour, lw=1, ls="--", alpha=0.8)
    open_overspeed: float | None = None
    for ev in evs:
        if ev.get("type") == "overspeed" and isinstance(ev.get("ts"), int | float):
            t = float(ev["ts"]) / 1000.0 - t0
            if ev.get("phase") == "start":
                open_overspeed = t
            elif ev.get("phase") == "end" and open_overspeed is not None:
                axs.axvspan(open_overspeed, t, color="#d62728", alpha=0.12)
                open_overspeed = None
    axs.set_xlabel("time since start (s)")
    axs.set_ylabel("km/h")
    axs.set_ylim(bottom=0)
    axs.grid(True, alpha=0.3)
    axs.legend(loc="upper right", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def iter_event_dicts(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Payloads from `edge replay` JSON lines ({"topic":..., "payload": {...}})."""
    for line in lines:
        if line.strip():
            obj = json.loads(line)
            yield dict(obj.get("payload", obj))


def main(drive: Path, *, config: Config, out: Path,
         events: Iterable[Mapping[str, Any]] | None = None) -> int:
    d = load_drive(drive)
    evs = list(events) if events is not None else events_for(drive, config)
    render(d, config, evs, out)
    return 0
