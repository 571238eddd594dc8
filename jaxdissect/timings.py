"""Stage timestamps for ``bench/whole_process.py``: with ``JAXDISSECT_TIMINGS=1`` in the
environment, ``mark(stage)`` prints ``jaxdissect-timing <stage> <unix time>`` to stderr
(the bench subtracts the time it started the process); otherwise it does nothing."""

from __future__ import annotations

import os
import sys
import time

ENABLED = os.environ.get("JAXDISSECT_TIMINGS") == "1"


def mark(stage: str) -> None:
    """Prints when ``stage`` ended (only with ``JAXDISSECT_TIMINGS=1``)."""
    if ENABLED:
        print(f"jaxdissect-timing {stage} {time.time():.6f}", file=sys.stderr, flush=True)
