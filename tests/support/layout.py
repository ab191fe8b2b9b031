"""The suite's layout, enforced at collection (a pytest plugin, loaded by tests/conftest.py).

* Every test that uses the broker's PKI (the ``pki`` fixture, which ``broker``,
  ``subscriber`` and the persistent brokers build on) gets the ``broker`` marker, so
  ``pytest -m "not broker"`` runs what needs no Mosquitto.
* ``tests/unit/`` holds tests that need no broker: a test there that uses one stops the
  collection with a message naming it (its place is ``tests/integration/``).
"""

from __future__ import annotations

import pytest

BROKER_FIXTURE = "pki"  # the root of every broker fixture's dependencies
UNIT = ("tests", "unit")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "broker: needs a real mosquitto (set by this plugin)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced: list[str] = []
    for item in items:
        if BROKER_FIXTURE not in getattr(item, "fixturenames", ()):
            continue
        item.add_marker(pytest.mark.broker)
        try:
            parts = item.path.relative_to(config.rootpath).parts
        except ValueError:
            continue
        if parts[: len(UNIT)] == UNIT:
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "tests/unit/ is for tests without a broker; move these to tests/integration/: "
            + ", ".join(misplaced)
        )
