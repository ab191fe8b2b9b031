"""The durable outbox: an SQLite (WAL) queue between the core and the uplink.

Synchronous API -- async code calls it through ``asyncio.to_thread`` -- over one
connection guarded by a lock (``store``). Other processes (``edge outbox stats |
purge``) may open the same database at the same time: nothing is cached across
transactions.

* Lanes by priority (``edge.model.Lane``): alerts drain first and are evicted last.
  FIFO within a lane.
* At-least-once: ``claim`` marks rows in flight (``State.INFLIGHT``), ``ack`` deletes
  them only after the uplink confirmed; ``release`` returns them to ready. Rows in
  flight when the process died are ready again on the next open. Settling acts only
  on rows still in flight and counts what it really deleted, so a row is never settled
  twice (a purge or an eviction may have taken it meanwhile). ``id`` is UNIQUE: a
  re-put of the same envelope is ignored (``INSERT OR IGNORE``).
* ``schema``: tables, the row states (``State``), migrations, the claim query.
* ``intake``: durability per batch (alerts fsync'd) and what a full disk does to a put.
* ``bounds``: byte caps, per-lane quotas and TTLs, enforced inside the writing
  transaction; every drop is counted in ``stats()`` and survives restarts.
* ``disk``: free space, pressure, the reserve held for alerts, a full disk recognised
  by its error code.
* ``sealing``: encryption at rest (``edge.seal``), rows no key opens set aside.
* ``state``: small named JSON documents written in the same transaction as the
  envelopes they belong to (``put(..., state=...)``): the rules' state across restarts.
* Private (``edge.private``): the database, its ``-wal``/``-shm`` and the reserve are
  created 0600 in a folder created 0700; the owner's open tightens them (or refuses).
"""

from edge.outbox.bounds import EVICT_ORDER, LOWER
from edge.outbox.disk import MB, Reserve, disk_report, free_bytes, is_disk_full
from edge.outbox.outbox import Outbox
from edge.outbox.schema import CLAIM_SQL, SCHEMA_VERSION, Row, State
from edge.outbox.sealing import sealer_for, topic_template

__all__ = ["CLAIM_SQL", "EVICT_ORDER", "LOWER", "MB", "SCHEMA_VERSION", "Outbox", "Reserve",
           "Row", "State", "disk_report", "free_bytes", "is_disk_full", "sealer_for",
           "topic_template"]
