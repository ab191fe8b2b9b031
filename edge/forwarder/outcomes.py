"""What a publish's outcome does to its rows, and the counters that tell it.

PUBACK < 0x80 -> ack (the rows leave, once settled); ``PublishRejected`` -> reject
(dropped and counted, never retried); ``PublishFailed`` (this publish failed on a
working connection: nucleus lite offline) -> the unit goes back to the stage in its lane
order and no publish starts before a capped, jittered backoff (one step per failing
round; counted in ``publish_failures``, logged once, ``on_publish_error`` told; the
first success resets it); any other ``UplinkError`` -> ``failed``: the connection is
given up (its rows are released when the forwarder's run ends).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from edge.core.backoff import Backoff
from edge.errors import PublishFailed, PublishRejected, UplinkError
from edge.forwarder.lease import Lease
from edge.forwarder.units import Stage, Unit
from edge.logconf import Once
from edge.uplinks.base import Uplink

log = structlog.get_logger()

COUNTERS = ("published", "publish_batches", "rejected", "bytes_sent", "publish_failures",
            "outbox_errors")


class Outcomes:
    def __init__(self, lease: Lease, *, retry: Backoff, once: Once,
                 on_publish_error: Callable[[str | None], None] | None) -> None:
        self.lease = lease
        self.retry = retry
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.hold_until = 0.0  # after a PublishFailed, no publish before this (monotonic)
        self.failed: BaseException | None = None  # the connection is given up
        self._once = once
        self._on_publish_error = on_publish_error

    def reset(self) -> None:
        """A new connection."""
        self.failed, self.hold_until = None, 0.0
        self.retry.reset()

    async def send(self, uplink: Uplink, unit: Unit, stage: Stage) -> None:
        try:
            await uplink.publish(unit.topic, unit.payload, qos=1,
                                 user_properties=unit.user_properties)
        except PublishRejected as exc:
            self.counters["rejected"] += len(unit.seqs)
            self._once(log, f"rejected:{unit.topic}", "publish rejected, dropped",
                       topic=unit.topic, rows=len(unit.seqs), reason=str(exc))
            self.lease.reject(unit.seqs)
        except PublishFailed as exc:
            self._publish_failed(unit, exc, stage)
        except UplinkError as exc:
            self.failed = self.failed or exc  # its rows are released at the end of run
        except TimeoutError:
            self.failed = self.failed or UplinkError(f"no PUBACK for {unit.topic}")
        except Exception as exc:  # a defect: run() raises it
            self.failed = self.failed or exc
        else:
            self._published(unit)

    def _publish_failed(self, unit: Unit, exc: PublishFailed, stage: Stage) -> None:
        """The connection works, this publish did not: the unit again after a backoff."""
        self.counters["publish_failures"] += 1
        now = time.monotonic()
        if self.hold_until <= now:  # one backoff step per failing round
            delay = self.retry.next()
            self.hold_until = now + delay
            self._once(log, "publish-failed", "publish failed, retrying with backoff",
                       topic=unit.topic, reason=str(exc), retry_in_s=round(delay, 2))
            if self._on_publish_error is not None:
                self._on_publish_error(str(exc))
        stage.put_back(unit)

    def _published(self, unit: Unit) -> None:
        if self.retry.attempts:
            self.retry.reset()
            self._once.clear("publish-failed")
            log.info("publish works again", topic=unit.topic)
            if self._on_publish_error is not None:
                self._on_publish_error(None)
        self.counters["published"] += len(unit.seqs)
        self.counters["publish_batches"] += 1
        self.counters["bytes_sent"] += len(unit.payload)
        self.lease.ack(unit.seqs)
