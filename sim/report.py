"""Draw a drive: the track coloured by speed with zones, POIs and events; speed over time.

Offline by design (no map tiles): the map is drawn in a local metric frame around the
drive, with a scale in metres. ``render`` takes the events as plain dicts
(``{"type": ..., "ts": ms, "lat": ..., "lon": ..., ...}``, i.e. published payloads),
so it draws events from any source; ``events_for`` gets them by replaying the drive
through the engine (``edge.replay.replay_events``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.core.limits import Limit
from sim.drive import Drive, iter_timeline, load_drive, nmea_checksum_ok

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
    """(t, km/h) from the CAN speed signal of the config, when it has one: the same
    reader and DBC loading as the daemon and ``edge replay`` (non-strict: real DBCs
    such as opendbc's overlap signals), drive.toml's ``can_time_offset_s`` applied."""
    if drive.can is None or config.can.dbc is None or not config.can.speed_signal:
        return []
    from edge.model import SpeedSample
    from edge.sources.canlog import iter_log_speed
    from edge.sources.dbc import decoder_for

    off = drive.can_time_offset_s
    return [(s.time + off, s.speed_kmh) for s in iter_log_speed(drive.can, decoder_for(config.can))
            if isinstance(s, SpeedSample)]


def events_for(drive: Path, config: Config,
               warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The alert and trip events the engine decides for ``drive``, as payload dicts, and
    the telemetry records that carry a posted road limit (``[roads]`` configured);
    ``warn`` hears what ``edge replay`` warns of: clocks that disagree, skipped lines."""
    from edge.replay import replay_events

    out = []
    for env in replay_events(drive, config, warn=warn):
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


def limits_of(track: Sequence[TrackPoint], config: Config) -> list[Limit]:
    """The applicable limit and its source at each track point, decided as the rules
    decide it: every zone kind and shape, ``maxspeed = "none"``, the policy."""
    from edge.core.drivegeo import limits_along
    from edge.core.zones import empty_zones
    from edge.sources.zonesfile import load_zones

    zones = load_zones(config.rules.zones) if config.rules.zones else empty_zones()
    return limits_along(zones, config.rules.speed, [(p.lat, p.lon) for p in track])


def _first_coordinate(zones: Sequence[Mapping[str, Any]]) -> tuple[float, float] | None:
    for f in zones:
        coords: Any = (f.get("geometry") or {}).get("coordinates")
        while isinstance(coords, list) and coords and isinstance(coords[0], list):
            coords = coords[0]
        if isinstance(coords, list) and len(coords) >= 2:
            return float(coords[0]), float(coords[1])
    return None


def _span_m(track: Sequence[TrackPoint], frame: _Frame) -> float:
    if len(track) < 2:
        return 1000.0
    pts = [frame.xy(p.lon, p.lat) for p in track]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return max(50.0, max(xs) - min(xs), max(ys) - min(ys))


def _label(ev: Mapping[str, Any]) -> str:
    kind = str(ev.get("type"))
    what = ev.get("phase") or ev.get("transition") or ""
    name = ev.get("fence") or ev.get("poi") or ""
    return " ".join(str(x) for x in (kind, what, name) if x)


def separate_labels(fig: Any, ax: Any, *, step_pt: float = 11.0, tries: int = 12) -> int:
    """Move the map's text labels down, one line at a time, until none overlaps a label
    placed before it (measured on the rendered figure). Returns how many moved."""
    from matplotlib.text import Annotation

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    moved = 0
    for a in [t for t in ax.texts if isinstance(t, Annotation)]:
        bb = a.get_window_extent(renderer)
        n = 0
        while any(bb.overlaps(p) for p in placed) and n < tries:
            x, y = a.xyann
            a.xyann = (x, y - step_pt)
            bb = a.get_window_extent(renderer)
            n += 1
        moved += n > 0
        placed.append(bb)
    return moved


def labels_overlap(fig: Any, ax: Any) -> int:
    """How many pairs of the map's labels overlap (for tests)."""
    from matplotlib.text import Annotation

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts if isinstance(t, Annotation)]
    return sum(1 for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b))


def render(drive: Drive, config: Config, events: Iterable[Mapping[str, Any]], out: Path, *,
           title: str | None = None, keep: list[Any] | None = None) -> Path:
    """Write the report PNG to ``out`` and return it. ``keep``: gets (figure, map axes,
    speed axes) appended and the figure stays open (tests look at the axes)."""
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
    else:  # a CAN-only drive: the map is the zones, around their first point
        first = _first_coordinate(zones)
        frame = _Frame(first[1], first[0]) if first else _Frame(0.0, 0.0)
    # times from the drive's start, whichever stream starts it
    starts = [x for x in (track[0].t if track else None,
                          can_speed[0][0] if can_speed else None) if x is not None]
    t0 = min(starts) if starts else 0.0

    fig = plt.figure(figsize=(14, 10), dpi=100)
    grid = fig.add_gridspec(2, 1, height_ratios=(2.2, 1.0), hspace=0.25, bottom=0.12)
    ax = fig.add_subplot(grid[0])
    axs = fig.add_subplot(grid[1])

    # zones
    for f in zones:
        props = f.get("properties") or {}
        geom = f.get("geometry") or {}
        kind = props.get("kind", "poi" if "offer" in props else "fence")
        name = str(props.get("name", props.get("id", "")))
        maxspeed = props.get("maxspeed")
        try:
            if geom.get("type") in ("Polygon", "MultiPolygon"):
                shp = shape(geom)
                polys = [shp] if shp.geom_type == "Polygon" else list(shp.geoms)
                colour = "#9467bd" if kind == "speed" else "#1f77b4"
                for poly in polys:
                    pts = [frame.xy(x, y) for x, y in poly.exterior.coords]
                    ax.add_patch(MplPolygon(pts, closed=True, facecolor=colour, alpha=0.15,
                                            edgecolor=colour, lw=1.5))
                cx, cy = frame.xy(shp.centroid.x, shp.centroid.y)
                label = name
                if isinstance(maxspeed, int | float) and f"{maxspeed:g}" not in name:
                    label += f" ({maxspeed:g} km/h)"
                elif maxspeed == "none":
                    label += " (no limit)"
                ax.annotate(label, (cx, cy), xytext=(0, 0), textcoords="offset points",
                            color=colour, ha="center", fontsize=9)
            elif geom.get("type") == "Point":
                x, y = frame.xy(*geom["coordinates"][:2])
                r = float(props.get("radius_m", 25.0))
                ax.add_patch(Circle((x, y), r, facecolor="#ff7f0e", alpha=0.15,
                                    edgecolor="#ff7f0e", lw=1.5))
                ax.plot([x], [y], marker="P", color="#ff7f0e", ms=9)
                ax.annotate(name, (x, y + r + 5), xytext=(0, 0), textcoords="offset points",
                            color="#ff7f0e", ha="center", fontsize=9)
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
    if not track:
        ax.text(0.5, 0.97, "no GNSS track in this drive (CAN only): zones shown",
                transform=ax.transAxes, ha="center", va="top", fontsize=11, color="grey",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="box")  # local metres, the same scale both ways
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
        limits = limits_of(track, config)
        lim_vals = [lim.kmh if lim.kmh is not None else float("nan") for lim in limits]
        tol = config.rules.speed.tolerance_kmh
        axs.fill_between(ts, 0, lim_vals, step="post", color="#2ca02c", alpha=0.12,
                         label="within the limit")
        axs.fill_between(ts, lim_vals, [v + tol + lim * config.rules.speed.tolerance_pct / 100
                                        for v, lim in zip(lim_vals, lim_vals, strict=True)],
                         step="post", color="#ffbf00", alpha=0.25, label="tolerance")
        applied = sorted({(lim.source, lim.kmh) for lim in limits},
                         key=lambda a: (a[0] != "default", a[0]))
        axs.step(ts, lim_vals, where="post", color="#d62728", lw=1.2,
                 label="limit applied: " + ", ".join(
                     f"{src} " + (f"{kmh:g} km/h" if kmh is not None else "no limit")
                     for src, kmh in applied))
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
    default_limit = config.rules.speed.limit_kmh
    if can_speed and not track and default_limit is not None:
        # no position: the rules apply the default limit all along
        default = default_limit
        ts_can = [t - t0 for t, _ in can_speed]
        axs.plot([ts_can[0], ts_can[-1]], [default, default], color="#d62728", lw=1.2,
                 label=f"limit applied: default {default:g} km/h (no position)")
        axs.set_ylim(0, max(axs.get_ylim()[1], default * 1.1))
    axs.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8)
    separate_labels(fig, ax)
    fig.savefig(out, format="png")  # the caller checked the folder exists
    if keep is not None:
        keep.append((fig, ax, axs))
    else:
        plt.close(fig)
    return out


def iter_event_dicts(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Payloads from `edge replay` JSON lines ({"topic":..., "payload": {...}})."""
    for line in lines:
        if line.strip():
            obj = json.loads(line)
            yield dict(obj.get("payload", obj))


def main(drive: Path, *, config: Config, out: Path,
         events: Iterable[Mapping[str, Any]] | None = None,
         warn: Callable[[str], None] | None = None) -> int:
    d = load_drive(drive)
    evs = list(events) if events is not None else events_for(drive, config, warn)
    render(d, config, evs, out)
    return 0
