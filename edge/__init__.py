"""vehicle-edge: an edge daemon for car gateways."""

__version__ = "0.1.0"
