"""``UplinkBase._post``: what a library's thread (paho's network loop, awscrt's event
loop) hands the event loop runs there in order, one wake-up for a burst, and a failing
callback is reported without losing the ones after it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from edge.uplinks.base import UplinkBase


class _Uplink(UplinkBase):
    name = "test"


def test_a_burst_from_a_thread_runs_in_order_after_one_wake_up() -> None:
    async def main() -> tuple[list[int], int]:
        up = _Uplink()
        loop = asyncio.get_running_loop()
        up._loop = loop
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(*args: Any, **kw: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return real(*args, **kw)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        got: list[int] = []
        t = threading.Thread(target=lambda: [up._post(got.append, i) for i in range(1000)])
        t.start()
        t.join()  # the loop is busy (here) while the thread posts: a burst of PUBACKs
        for _ in range(3):
            await asyncio.sleep(0)
        return got, wakeups

    got, wakeups = asyncio.run(main())
    assert got == list(range(1000))
    assert wakeups == 1


def test_a_failing_callback_is_reported_and_the_rest_still_run() -> None:
    async def main() -> tuple[list[str], list[dict[str, Any]]]:
        up = _Uplink()
        loop = asyncio.get_running_loop()
        up._loop = loop
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        got: list[str] = []

        def boom() -> None:
            raise ValueError("boom")

        def post() -> None:
            up._post(got.append, "a")
            up._post(boom)
            up._post(got.append, "b")

        t = threading.Thread(target=post)
        t.start()
        t.join()
        await asyncio.sleep(0.01)
        up._post(got.append, "c")  # later posts still wake the loop
        await asyncio.sleep(0.01)
        return got, reported

    got, reported = asyncio.run(main())
    assert got == ["a", "b", "c"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)
    assert reported[0]["message"] == "test: a posted callback failed"


def test_nothing_is_posted_to_a_closed_loop() -> None:
    up = _Uplink()
    loop = asyncio.new_event_loop()
    up._loop = loop
    loop.close()
    up._post(print, "never")  # no error, nothing scheduled
    assert not up._posted
