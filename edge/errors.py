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

Exit codes are decided here and nowhere else (``ExitCode``, ``exit_code``, ``describe``):
0 done, 1 it failed while running (outbox, uplink, a device, I/O), 2 what the user gave
cannot work (config, zones file, arguments, an input file), 130 interrupted.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable


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


class ExitCode(enum.IntEnum):
    """The process exit status of every ``edge`` command."""

    OK = 0
    FAILED = 1  # it failed while running: outbox, uplink, a device, I/O
    USAGE = 2  # what the user gave cannot work: config, zones file, arguments, input
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def exit_code(exc: BaseException) -> ExitCode:
    """The exit status for an error that ends a command."""
    if isinstance(exc, ConfigError | ZonesError):
        return ExitCode.USAGE
    return ExitCode.FAILED


def describe(exc: EdgeError, *, config: str = "configuration") -> str:
    """The one line that tells the user why a command stopped (``edge: ...``)."""
    if isinstance(exc, ConfigError):
        return f"edge: invalid {config}: {exc.field}: {exc.reason}"
    if isinstance(exc, ZonesError):
        return f"edge: zones: {exc}"
    if isinstance(exc, OutboxError):
        return f"edge: outbox: {exc}"
    return f"edge: {exc}"


def guarded(command: Callable[[], int]) -> int:
    """Run a command to its exit status: an ``EdgeError`` is its one line on stderr
    (``describe``) and its exit code, Ctrl-C is ``INTERRUPTED``."""
    try:
        return command()
    except EdgeError as exc:
        print(describe(exc), file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
