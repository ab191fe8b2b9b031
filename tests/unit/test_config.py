from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import NON_NEGATIVE, POSITIVE, config_from_dict, load_config
from edge.errors import ConfigError


def err(data: dict[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        config_from_dict(data)
    return ei.value


def test_minimal_config_has_sane_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('thing = "car-1"\n[outbox]\npath = "state/o.db"\n')
    cfg = load_config(p)
    assert cfg.thing == "car-1"
    assert cfg.uplink.kind == "mqtt" and cfg.can.interface == "none"
    # relative paths resolve against the config file's directory
    assert cfg.outbox.path == tmp_path / "state" / "o.db"
    assert cfg.health_path == tmp_path / "state" / "health.json"


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"thing": 42}, "thing", "string"),
        ({}, "thing", "missing"),
        ({"thing": "a/b"}, "thing", "letters"),
        ({"thing": "a", "gnss": {"baud": "fast"}}, "gnss.baud", "integer"),
        ({"thing": "a", "gnss": {"bogus": 1}}, "gnss.bogus", "unknown key"),
        ({"thing": "a", "typo": {}}, "typo", "unknown key"),
        ({"thing": "a", "uplink": {"kind": "pigeon"}}, "uplink.kind", "one of"),
        ({"thing": "a", "uplink": {"kind": "file"}}, "uplink.path", "required"),
        ({"thing": "a", "uplink": {"port": 70000}}, "uplink.port", "1-65535"),
        ({"thing": "a", "uplink": {"kind": "iotcore"}}, "uplink.cert", "required"),
        ({"thing": "a", "rules": {"speed": {"limit_kmh": -3}}}, "rules.speed.limit_kmh",
         "positive"),
        ({"thing": "a", "rules": {"speed": {"limit_kmh": True}}}, "rules.speed.limit_kmh",
         "number"),
        ({"thing": "a", "can": {"interface": "slcan"}}, "can.dbc", "required"),
        ({"thing": "a", "can": {"interface": "virtual", "dbc": "x.dbc",
                                "speed_signal": "NODOT"}}, "can.speed_signal", "MESSAGE.SIGNAL"),
        ({"thing": "a", "gnss": "ttyS0"}, "gnss", "table"),
    ],
)
def test_errors_name_the_field(data: dict[str, object], field: str, words: str) -> None:
    e = err(data)
    assert e.field == field
    assert words in e.reason


def test_unreadable_and_non_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("thing = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_examples_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    for name in ("laptop-sim.toml", "raspberry-pi.toml"):
        cfg = load_config(root / "examples" / name)
        assert cfg.thing


@pytest.mark.parametrize(("uplink", "port"), [
    ({"kind": "mqtt"}, 1883),
    ({"kind": "mqtt", "ca": "ca.pem"}, 8883),  # TLS by default once a CA is given
    ({"kind": "mqtt", "ca": "ca.pem", "tls": False}, 1883),
    ({"kind": "mqtt", "tls": True}, 8883),
    ({"kind": "mqtt", "port": 18830}, 18830),
    ({"kind": "iotcore", "endpoint": "x-ats.iot.eu-west-1.amazonaws.com", "ca": "ca.pem",
      "cert": "c.pem", "key": "k.pem"}, 8883),
    ({"kind": "iotcore", "endpoint": "x-ats.iot.eu-west-1.amazonaws.com", "ca": "ca.pem",
      "cert": "c.pem", "key": "k.pem", "port": 443}, 443),
])
def test_the_broker_port_default_is_decided_once(uplink: dict[str, object], port: int) -> None:
    """The uplinks and the daemon's reconnect probe read the same port."""
    from edge.uplinks.mqtt import MqttUplink

    cfg = config_from_dict({"thing": "car", "uplink": uplink})
    assert cfg.uplink.broker_port == port
    if cfg.uplink.kind == "mqtt":
        assert MqttUplink(cfg.uplink, client_id="car").port == port


@pytest.mark.parametrize("path", POSITIVE + NON_NEGATIVE)
def test_every_signed_number_is_checked_and_named(path: str) -> None:
    """Each field of the sign tables exists, and a bad value is refused naming it."""
    section, _, name = path.rpartition(".")
    bad = 0 if path in POSITIVE else -1
    data: dict[str, object] = {"thing": "car"}
    node = data
    for part in section.split("."):
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[name] = bad
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.field == path
    assert "positive" in info.value.reason or "negative" in info.value.reason
