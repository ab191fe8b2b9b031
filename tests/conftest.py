from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.support.broker import Broker, Pki, Subscriber

# compiled DBC specs (edge.sources.dbc) go to a per-run cache, not the user's ~/.cache;
# daemons started by the tests inherit it
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ve-xdg-cache-")

THING = "car-test-1"
OTHER = "car-test-2"

# tests.support.layout: the broker marker, and no broker in tests/unit (pytester tests it)
pytest_plugins = ["pytester", "tests.support.layout"]


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required for the TLS broker tests")
    p = Pki.create([THING, OTHER])
    yield p
    shutil.rmtree(p.dir, ignore_errors=True)


@pytest.fixture
def broker(pki: Pki) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None and not __import__("os").path.exists(
        "/usr/sbin/mosquitto"
    ):
        pytest.fail("mosquitto is not installed (make test installs it: apt-get install mosquitto)")
    b = Broker(pki)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker)
    yield s
    s.close()
