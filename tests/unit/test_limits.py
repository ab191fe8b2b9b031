"""The one place that decides the applicable speed limit and its source."""

from __future__ import annotations

import pytest

from edge.core.limits import Limit, LimitClaim, decide_limit


def c(kmh: float | None, src: str) -> LimitClaim:
    return LimitClaim(kmh, src)


@pytest.mark.parametrize(
    ("default", "policy", "claims", "expected"),
    [
        (50.0, "lowest", [], Limit(50.0, "default")),
        (None, "lowest", [], Limit(None, "default")),
        (50.0, "lowest", [c(30, "zone:a"), c(40, "zone:b")], Limit(30, "zone:a")),
        (50.0, "lowest", [c(80, "zone:a")], Limit(50.0, "default")),
        (None, "lowest", [c(80, "zone:a")], Limit(80, "zone:a")),
        (50.0, "zone", [c(80, "zone:a")], Limit(80, "zone:a")),
        (50.0, "default", [c(30, "zone:a"), c(None, "zone:n")], Limit(50.0, "default")),
        # "none" lifts the default under both zone policies ...
        (50.0, "lowest", [c(None, "zone:n")], Limit(None, "zone:n")),
        (50.0, "zone", [c(None, "zone:n")], Limit(None, "zone:n")),
        # ... but a numeric claim at the same place still applies, even above the default
        (50.0, "lowest", [c(None, "zone:n"), c(80, "zone:w")], Limit(80, "zone:w")),
        (50.0, "zone", [c(80, "zone:w"), c(None, "zone:n")], Limit(80, "zone:w")),
        # ties: by source name, not by order
        (None, "lowest", [c(30, "zone:b"), c(30, "zone:a")], Limit(30, "zone:a")),
        (None, "lowest", [c(None, "zone:b"), c(None, "zone:a")], Limit(None, "zone:a")),
    ],
)
def test_decide_limit(default: float | None, policy: str, claims: list[LimitClaim],
                      expected: Limit) -> None:
    assert decide_limit(default, policy, claims) == expected  # type: ignore[arg-type]
    assert decide_limit(default, policy, reversed(claims)) == expected  # type: ignore[arg-type]
