"""The project's error tree. Library exceptions never leak past an adapter::

    EdgeError
    ├── ConfigError            invalid configuration (names the field)
    ├── ZonesError             invalid zones file (names the feature)
    ├── SourceError            a source cannot read (port vanished, adapter gone)
    │   ├── GnssError
    │   └── CanError
    ├── OutboxError            the durable queue failed (disk full, corrupt)
    └── UplinkError            transient: not connected, timeout, broker gone
        ├── UplinkAuthError    credentials refused (backoff jumps to the cap)
        ├── PublishFailed      this publish failed, the connection is fine (nucleus lite
        │                      offline): retry the message after a backoff, no reconnect
        └── PublishRejected    permanent for that message (ACL deny, too large)
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error vehicle-edge raises on purpose."""


class ConfigError(EdgeError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ZonesError(EdgeError):
    pass


class SourceError(EdgeError):
    pass


class GnssError(SourceError):
    pass


class CanError(SourceError):
    pass


class OutboxError(EdgeError):
    pass


class UplinkError(EdgeError):
    pass


class UplinkAuthError(UplinkError):
    pass


class PublishFailed(UplinkError):
    pass


class PublishRejected(UplinkError):
    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
