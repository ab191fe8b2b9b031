"""The forwarder: drains the outbox into a connected uplink -- alerts first, telemetry
batched (optionally compressed), IoT Core quotas kept, a row leaves only after its
PUBACK.

* ``drain``: ``Forwarder``, the dispatcher over a window of publishes;
* ``lease``: ``Lease``, the rows it holds (claims and settlements in worker threads);
* ``units``: ``Unit`` (one publish and its rows), telemetry batching and compression.
"""

from edge.forwarder.drain import COUNTERS, Forwarder
from edge.forwarder.lease import Lease
from edge.forwarder.units import CONTENT_ENCODING, Unit, compress, decompress

__all__ = ["CONTENT_ENCODING", "COUNTERS", "Forwarder", "Lease", "Unit", "compress", "decompress"]
