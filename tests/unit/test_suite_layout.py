"""The suite's own layout rules (tests.support.layout), run on a scratch suite."""

from __future__ import annotations

import pytest

CONFTEST = """
import pytest

pytest_plugins = ["tests.support.layout"]


@pytest.fixture
def pki():
    return "a stand-in: these tests only collect"


@pytest.fixture
def broker(pki):
    return pki
"""

BROKER_TEST = "def test_needs_a_broker(broker):\n    assert broker\n"
PLAIN_TEST = "def test_pure():\n    assert 1 + 1 == 2\n"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\naddopts = --strict-markers\n")
    pytester.makeconftest(CONFTEST)
    for d in ("tests", "tests/unit", "tests/integration"):
        pytester.mkdir(d)  # not packages: "tests" is the real suite's
    return pytester


def test_a_broker_test_in_unit_stops_the_collection_naming_it(suite: pytest.Pytester) -> None:
    (suite.path / "tests/unit/test_a.py").write_text(BROKER_TEST + PLAIN_TEST)
    res = suite.runpytest("--collect-only", "-q")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*tests/unit/ is for tests without a broker*"
                              "tests/unit/test_a.py::test_needs_a_broker*"])
    assert "test_pure" not in res.stderr.str()


def test_broker_tests_elsewhere_carry_the_marker(suite: pytest.Pytester) -> None:
    (suite.path / "tests/integration/test_b.py").write_text(BROKER_TEST)
    (suite.path / "tests/unit/test_c.py").write_text(PLAIN_TEST)
    res = suite.runpytest("-m", "not broker", "-q")
    res.assert_outcomes(passed=1, deselected=1)
    res = suite.runpytest("-m", "broker", "-q")
    res.assert_outcomes(passed=1, deselected=1)
    res.stdout.fnmatch_lines(["*1 passed, 1 deselected*"])
