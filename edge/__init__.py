"""vehicle-edge: an edge daemon for car gateways."""

__version__ = "0.1.0"

# The day this version was cut. A host clock before it cannot be right (a Pi without an
# RTC boots in 1970 or at its last shutdown): the GNSS reader then does not take the
# host clock as its week-rollover reference. Bump it with __version__.
BUILD_DATE = "2026-11-01"
