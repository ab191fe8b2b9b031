"""The daemon's parts, one job each, wired together by ``edge.app`` (the composition root).

* ``sources``     the input adapters (GNSS, CAN) as named tasks; restart by name
* ``ingest``      the bounded queue from the engine to the SQLite outbox (group commits)
* ``supervisor``  the uplink's connection state machine and the outbox drain
* ``ticker``      the passage of time for the rules, the status line, heap trims
* ``reloader``    validated hot reload (``Engine.reconfigure``), zones/roads file watchers
* ``health``      the health message and the status file ``edge status`` reads
* ``heap``        glibc arena cap and trim (resident memory on a Pi)
* ``loop``        the event loop a command runs on, and the stop signals
* ``start``       config or a clear exit, logging, and ``python -m edge.daemon`` (the
                  daemon without the command line's parser)
"""
