"""PUBACK reason codes: only "never as it is" drops a message; throttling retries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge.errors import PublishRejected, UplinkError
from edge.forwarder import Forwarder
from edge.model import Envelope, Lane
from edge.outbox import Outbox
from edge.uplinks.base import UplinkBase, check_puback


@pytest.mark.parametrize("code", [0x00, 0x10])
def test_success_codes(code: int) -> None:
    check_puback("t", code)


@pytest.mark.parametrize("code", [0x87, 0x90, 0x95, 0x99])
def test_permanent_codes_reject_the_message(code: int) -> None:
    with pytest.raises(PublishRejected) as ei:
        check_puback("vehicles/c/events/poi", code)
    assert ei.value.reason_code == code


@pytest.mark.parametrize("code", [0x80, 0x83, 0x97])
def test_transient_codes_are_connection_trouble_not_rejection(code: int) -> None:
    with pytest.raises(UplinkError) as ei:
        check_puback("t", code)
    assert not isinstance(ei.value, PublishRejected)


class ThrottledUplink(UplinkBase):
    """Answers 0x97 (quota exceeded, how AWS IoT Core throttles) to every publish."""

    name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    async def _publish(self, topic: str, payload: bytes, qos: int,
                       user_properties: Sequence[tuple[str, str]]) -> None:
        self.tries += 1
        check_puback(topic, 0x97)


def test_a_throttled_alert_stays_in_the_outbox(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([Envelope(id="a1", thing="c", type="overspeed", ts=1, seq=1,
                     topic="vehicles/c/events/overspeed", lane=Lane.ALERT, body={})])
    up = ThrottledUplink()

    async def go() -> None:
        with pytest.raises(UplinkError):
            await asyncio.wait_for(Forwarder(ob, thing="c", quota=False).run(
                up, asyncio.Event()), 10)

    asyncio.run(go())
    st = ob.stats()
    assert up.tries >= 1
    assert st["pending"] == 1 and st["lanes"]["alert"]["ready"] == 1
    assert st["counters"].get("rejected", 0) == 0
    ob.close()
