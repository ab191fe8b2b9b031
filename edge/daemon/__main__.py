"""``python -m edge.daemon (--config FILE | --greengrass)``: ``edge run``'s daemon without
the command line's parser (``edge.daemon.start``)."""

import sys

from edge.daemon.start import main

raise SystemExit(main(sys.argv[1:]))
