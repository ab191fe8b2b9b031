"""OSM ``maxspeed`` tagging -> a posted limit per direction of a way. Pure, no I/O.

What is understood (https://wiki.openstreetmap.org/wiki/Key:maxspeed):

* numbers with units: ``50``, ``"50 km/h"``, ``"30 mph"``, ``"10 knots"``
  (``edge.core.zones.parse_maxspeed``, the project's one parser of those);
* ``none`` (no limit: German Autobahn), ``walk`` (walking pace, the country's value),
  ``signals`` / ``variable`` (a variable sign: the limit is unknown);
* implicit values ``CC:context`` (``DE:urban``, ``FR:rural``, ``GB:nsl_single``,
  ``DE:zone30``, ``DE:zone:30``, ``DE:living_street``, ``DE:motorway``) from the table of
  country defaults below, given in ``maxspeed`` itself or, when ``maxspeed`` is
  missing, in ``maxspeed:type``, ``source:maxspeed`` or ``zone:maxspeed``;
* per direction: ``maxspeed:forward`` / ``maxspeed:backward`` over ``maxspeed``;
* ``maxspeed:conditional`` (and its ``:forward``/``:backward`` forms):
  ``"30 @ (Mo-Fr 07:00-17:00); 50 @ 22:00-06:00"``. Each condition is kept as text and
  evaluated at run time (``edge.roads.provider``) in the local time of the position;
  a condition that is not a time window (``wet``, ``weight>7.5``) is dropped and
  counted.

A drivable way with no usable tag gets the country's fallback for its road class,
marked ``source = "default"`` (``limit_source: road:default`` in events): motorways
the ``motorway`` value, trunk roads ``trunk``, primary and secondary roads ``rural``,
everything smaller ``urban``, living streets ``living_street``. An unknown country
uses the ``"*"`` row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from edge.core.zones import KNOT_KMH, MPH_KMH, parse_maxspeed

NO_LIMIT = math.inf  # "none": posted as unlimited
WALK_KMH = 7.0  # "walk" where the country row does not say otherwise
MPH = MPH_KMH
KNOTS = KNOT_KMH

# Statutory defaults in km/h by country and context (None in a row: no general limit,
# NO_LIMIT: the road has none). Contexts: urban, rural, trunk (expressway / dual
# carriageway), motorway, living_street, walk, bicycle_road. Written from the
# countries' road traffic acts as summarised on the OSM wiki's default speed limits
# page; the "*" row is for countries not listed.
DEFAULTS: dict[str, dict[str, float]] = {
    "*": {"urban": 50, "rural": 90, "trunk": 100, "motorway": 120, "living_street": 20},
    "AT": {"urban": 50, "rural": 100, "trunk": 100, "motorway": 130, "living_street": 5},
    "BE": {"urban": 50, "rural": 90, "trunk": 120, "motorway": 120, "living_street": 20},
    "CH": {"urban": 50, "rural": 80, "trunk": 100, "motorway": 120, "living_street": 20},
    "CZ": {"urban": 50, "rural": 90, "trunk": 110, "motorway": 130, "living_street": 20},
    "DE": {"urban": 50, "rural": 100, "trunk": 100, "motorway": NO_LIMIT,
           "living_street": 7, "walk": 7, "bicycle_road": 30},
    "DK": {"urban": 50, "rural": 80, "trunk": 90, "motorway": 130, "living_street": 15},
    "EE": {"urban": 50, "rural": 90, "trunk": 90, "motorway": 110, "living_street": 20},
    "ES": {"urban": 50, "rural": 90, "trunk": 100, "motorway": 120, "living_street": 20},
    "FI": {"urban": 50, "rural": 80, "trunk": 100, "motorway": 120, "living_street": 20},
    "FR": {"urban": 50, "rural": 80, "trunk": 110, "motorway": 130, "living_street": 20,
           "walk": 6},
    "GB": {"urban": 30 * MPH, "rural": 60 * MPH, "nsl_single": 60 * MPH,
           "nsl_dual": 70 * MPH, "trunk": 70 * MPH, "motorway": 70 * MPH,
           "living_street": 20 * MPH},
    "IE": {"urban": 50, "rural": 80, "trunk": 100, "motorway": 120, "living_street": 20},
    "IT": {"urban": 50, "rural": 90, "trunk": 110, "motorway": 130, "living_street": 20},
    "LT": {"urban": 50, "rural": 90, "trunk": 110, "motorway": 130, "living_street": 20},
    "LV": {"urban": 50, "rural": 90, "trunk": 90, "motorway": 110, "living_street": 20},
    "NL": {"urban": 50, "rural": 80, "trunk": 100, "motorway": 100, "living_street": 15},
    "NO": {"urban": 50, "rural": 80, "trunk": 90, "motorway": 110, "living_street": 20},
    "PL": {"urban": 50, "rural": 90, "trunk": 120, "motorway": 140, "living_street": 20},
    "PT": {"urban": 50, "rural": 90, "trunk": 100, "motorway": 120, "living_street": 20},
    "SE": {"urban": 50, "rural": 70, "trunk": 90, "motorway": 110, "living_street": 7},
    "US": {"urban": 25 * MPH, "rural": 55 * MPH, "trunk": 55 * MPH, "motorway": 65 * MPH,
           "living_street": 15 * MPH},
}

# road class -> context of the fallback for a way without any limit tag
CLASS_CONTEXT: dict[str, str] = {
    "motorway": "motorway", "motorway_link": "motorway",
    "trunk": "trunk", "trunk_link": "trunk",
    "primary": "rural", "primary_link": "rural", "secondary": "rural", "secondary_link": "rural",
    "living_street": "living_street",
}
DRIVABLE: frozenset[str] = frozenset({
    "motorway", "motorway_link", "trunk", "trunk_link", "primary", "primary_link",
    "secondary", "secondary_link", "tertiary", "tertiary_link", "unclassified",
    "residential", "living_street", "service", "road",
})
_IMPLICIT_RE = re.compile(r"^([A-Z]{2})(?:-[A-Z0-9]+)?:([a-z_]+?)(?::?(\d+))?$")
_ZONE_NUMBER_RE = re.compile(r"^[A-Z]{2}(?:-[A-Z0-9]+)?:(\d+)$")
_COND_SPLIT_RE = re.compile(r";(?![^()]*\))")
_COND_RE = re.compile(r"^\s*([^@]+?)\s*@\s*\(?\s*(.+?)\s*\)?\s*$")


class TagError(ValueError):
    """A limit tag that cannot be understood; ``reason`` is a short, stable key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limit:
    """A posted limit: ``kmh`` (``NO_LIMIT`` for none, None when unknown) and where it
    came from: ``"osm"`` (a tag on the way) or ``"default"`` (the country fallback)."""

    kmh: float | None
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WayLimits:
    forward: Limit
    backward: Limit
    forward_conditional: tuple[tuple[float, str], ...] = ()
    backward_conditional: tuple[tuple[float, str], ...] = ()
    problems: tuple[str, ...] = ()  # reasons of the tags that were ignored


def implicit_kmh(value: str, country: str | None = None) -> float | None:
    """km/h of an implicit value (``DE:urban``, ``FR:zone30``, ``walk``); None for an
    unknown limit (``signals``). Raises TagError."""
    v = value.strip()
    low = v.lower()
    if low in ("signals", "variable"):
        return None
    row = DEFAULTS.get(country or "", DEFAULTS["*"])
    if low == "walk":
        return row.get("walk", WALK_KMH)
    if low in ("none", "unlimited"):
        return NO_LIMIT
    m = _ZONE_NUMBER_RE.match(v)  # zone:maxspeed=DE:30
    if m is not None:
        return float(m.group(1))
    m = _IMPLICIT_RE.match(v)
    if m is None:
        raise TagError("bad_value", f"not a speed or a known implicit value: {value!r}")
    cc, context, number = m.group(1), m.group(2), m.group(3)
    if context.startswith("zone") and number:
        return float(number)
    if context == "zone" and not number:
        raise TagError("bad_value", f"zone without a number: {value!r}")
    table = DEFAULTS.get(cc)
    if table is None:
        raise TagError("unknown_country", f"no defaults for country {cc!r} in {value!r}")
    if context == "walk":
        return table.get("walk", WALK_KMH)
    kmh = table.get(context)
    if kmh is None:
        raise TagError("unknown_context", f"no default for {context!r} in {value!r}")
    return float(kmh)


def value_kmh(value: str, country: str | None = None) -> float | None:
    """km/h of one maxspeed value, explicit or implicit; NO_LIMIT for ``none``; None
    for unknown (``signals``). Raises TagError."""
    v = value.strip()
    if ";" in v:
        raise TagError("multiple_values", f"more than one value: {value!r}")
    try:
        kmh = parse_maxspeed(v)
    except ValueError:
        return implicit_kmh(v, country)
    return NO_LIMIT if kmh is None else kmh


def parse_conditional(value: str, country: str | None = None
                      ) -> tuple[list[tuple[float, str]], list[str]]:
    """``maxspeed:conditional`` -> ([(km/h, time condition)], [reasons of dropped parts])."""
    rules: list[tuple[float, str]] = []
    dropped: list[str] = []
    for part in _COND_SPLIT_RE.split(value):
        if not part.strip():
            continue
        m = _COND_RE.match(part)
        if m is None:
            dropped.append("conditional_syntax")
            continue
        try:
            kmh = value_kmh(m.group(1), country)
        except TagError:
            dropped.append("conditional_value")
            continue
        cond = m.group(2).strip()
        if kmh is None or not is_time_condition(cond):
            dropped.append("conditional_not_time")
            continue
        rules.append((kmh, cond))
    return rules, dropped


def is_time_condition(cond: str) -> bool:
    """Whether ``cond`` is an opening-hours time window (``Mo-Fr 07:00-17:00``), which
    ``opening_hours`` (opening-hours-py) can evaluate; ``wet`` or ``weight>7.5`` are not."""
    import opening_hours  # the [roads] extra; only the importer and the matcher need it

    if not any(ch.isdigit() for ch in cond) and not re.search(r"\b(?:Mo|Tu|We|Th|Fr|Sa|Su)\b",
                                                             cond):
        return False
    try:
        opening_hours.OpeningHours(cond)
    except Exception:  # the library's ParserError (and anything else it rejects)
        return False
    return True


def way_limits(tags: Mapping[str, str], country: str | None = None) -> WayLimits:
    """The limit of a drivable way in each direction, from its tags."""
    problems: list[str] = []
    cc = country

    def one(key: str) -> tuple[float | None, bool]:
        """(km/h, present): the value of ``key``; (None, True) for signals."""
        raw = tags.get(key)
        if raw is None:
            return None, False
        try:
            return value_kmh(raw, cc), True
        except TagError as exc:
            problems.append(exc.reason)
            return None, False

    base, has_base = one("maxspeed")
    if not has_base:
        for key in ("maxspeed:type", "source:maxspeed", "zone:maxspeed"):
            raw = tags.get(key)
            if raw is None or ":" not in raw:
                continue
            try:
                base, has_base = implicit_kmh(raw, cc), True
                break
            except TagError as exc:
                problems.append(exc.reason)
    fwd, has_fwd = one("maxspeed:forward")
    bwd, has_bwd = one("maxspeed:backward")
    fallback = fallback_limit(tags.get("highway", ""), cc)

    def pick(v: float | None, has: bool) -> Limit:
        if has:
            return Limit(v, "osm")
        if has_base:
            return Limit(base, "osm")
        return fallback

    conds: dict[str, tuple[tuple[float, str], ...]] = {}
    for suffix in ("", ":forward", ":backward"):
        raw = tags.get("maxspeed" + suffix + ":conditional")
        if raw is None:
            continue
        rules, dropped = parse_conditional(raw, cc)
        problems.extend(dropped)
        conds[suffix] = tuple(rules)
    return WayLimits(
        forward=pick(fwd, has_fwd), backward=pick(bwd, has_bwd),
        forward_conditional=conds.get(":forward", conds.get("", ())),
        backward_conditional=conds.get(":backward", conds.get("", ())),
        problems=tuple(problems))


def fallback_limit(highway: str, country: str | None) -> Limit:
    row = DEFAULTS.get(country or "", DEFAULTS["*"])
    context = CLASS_CONTEXT.get(highway, "urban")
    kmh = row.get(context, DEFAULTS["*"].get(context))
    return Limit(None if kmh is None else float(kmh), "default")


def oneway(tags: Mapping[str, str]) -> int:
    """1: only forward, -1: only backward (``oneway=-1``), 0: both directions.
    Motorways and roundabouts are one-way unless tagged otherwise."""
    v = tags.get("oneway", "").strip().lower()
    if v in ("yes", "true", "1"):
        return 1
    if v in ("-1", "reverse"):
        return -1
    if v in ("no", "false", "0", "reversible", "alternating"):
        return 0
    hw = tags.get("highway", "")
    if hw in ("motorway", "motorway_link") or tags.get("junction") in ("roundabout", "circular"):
        return 1
    return 0


def drivable(tags: Mapping[str, str]) -> str | None:
    """None when a motor vehicle may drive the way, else the reason it is left out."""
    hw = tags.get("highway")
    if hw is None:
        return "not_highway"
    if hw not in DRIVABLE:
        return "not_drivable"
    if tags.get("area") == "yes":
        return "area"
    if tags.get("service") == "parking_aisle":
        return "parking_aisle"
    for key in ("motor_vehicle", "motorcar", "vehicle", "access"):
        v = tags.get(key)
        if v is None:
            continue
        if v in ("no", "private_no"):
            return "no_motor_vehicles"
        break
    return None
