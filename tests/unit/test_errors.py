"""One exit-code table (``edge.errors``): every path of every command agrees."""

from __future__ import annotations

import pytest

from edge.errors import (
    CanError,
    ConfigError,
    EdgeError,
    ExitCode,
    OutboxError,
    UplinkAuthError,
    UplinkError,
    ZonesError,
    describe,
    exit_code,
)


@pytest.mark.parametrize(("exc", "code"), [
    (ConfigError("uplink.port", "must be 1..65535"), 2),
    (ZonesError("feature 3: no geometry"), 2),  # was 1 under edge run --greengrass
    (OutboxError("disk I/O error"), 1),
    (UplinkError("broker gone"), 1),
    (UplinkAuthError("not authorized"), 1),
    (CanError("adapter unplugged"), 1),
    (EdgeError("anything else"), 1),
])
def test_exit_code_of_each_error(exc: EdgeError, code: int) -> None:
    assert exit_code(exc) == code


def test_the_table_is_what_a_shell_sees() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 130]


def test_describe_names_what_failed() -> None:
    assert describe(ConfigError("gnss.baud", "not a rate"), config="config edge.toml") == (
        "edge: invalid config edge.toml: gnss.baud: not a rate")
    assert describe(ConfigError("uplink.kind", "unknown")) == (
        "edge: invalid configuration: uplink.kind: unknown")
    assert describe(ZonesError("zones.geojson: bad")) == "edge: zones: zones.geojson: bad"
    assert describe(OutboxError("locked")) == "edge: outbox: locked"
    assert describe(UplinkError("refused")) == "edge: refused"
