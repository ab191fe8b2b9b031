"""The applicable speed limit: one decision, from the default and what each source says.

A *claim* is what one source says about the place the car is at: "the limit here is
50 km/h" or "here there is no limit" (``maxspeed = "none"``: the German Autobahn), with
where it came from (``zone:<id>`` for a zone of the zones file; another source, such as
posted road limits, adds its own claims with its own prefix). ``decide_limit`` turns
the configured default, the policy and the claims into the one ``Limit`` the overspeed
rule measures against, and its source, which is what the overspeed events report.

``limit_policy`` (``rules.speed``):

* ``"lowest"`` (default): the lowest of the default and every numeric claim. A "none"
  claim lifts the default (no limit here unless another claim sets one).
* ``"zone"``: claims replace the default: the lowest numeric claim; else no limit when
  a "none" claim applies; else the default.
* ``"default"``: claims are ignored.

Ties are broken by the source name, so the decision does not depend on claim order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

LimitPolicy = Literal["lowest", "zone", "default"]
DEFAULT_SOURCE = "default"


@dataclass(frozen=True, slots=True)
class Limit:
    """The limit that applies (``kmh`` None: none applies) and who set it."""

    kmh: float | None
    source: str


@dataclass(frozen=True, slots=True, order=True)
class LimitClaim:
    """One source's word on the limit here: ``kmh`` None means explicitly no limit."""

    kmh: float | None
    source: str


def decide_limit(
    default_kmh: float | None, policy: LimitPolicy, claims: Iterable[LimitClaim]
) -> Limit:
    """The applicable limit for ``claims`` (everything that applies at the car's place)."""
    default = Limit(default_kmh, DEFAULT_SOURCE)
    if policy == "default":
        return default
    numeric: LimitClaim | None = None
    unlimited: LimitClaim | None = None
    for c in claims:
        if c.kmh is None:
            if unlimited is None or c.source < unlimited.source:
                unlimited = c
        elif numeric is None or (c.kmh, c.source) < (numeric.kmh, numeric.source):
            numeric = c
    if numeric is not None:
        assert numeric.kmh is not None
        if policy == "zone" or unlimited is not None or default_kmh is None \
                or numeric.kmh < default_kmh:
            return Limit(numeric.kmh, numeric.source)
        return default
    if unlimited is not None:
        return Limit(None, unlimited.source)
    return default
