"""Progress bars, made in one place: a live bar on a terminal, a few lines in a log.

On a terminal tqdm redraws its bar in place. Written to a file or a pipe (``make demo >
log``), each redraw is a carriage-return frame, thousands per stage: megabytes of log. So
when the stream is not a terminal, ``progress_bar`` redraws at most every
``LOG_INTERVAL`` seconds, and each frame becomes a line of its own.
"""

from __future__ import annotations

import sys
from typing import Any

# Seconds between two lines of a bar that writes to a file or a pipe.
LOG_INTERVAL = 30.0


class _Lines:
    """A stream wrapper that turns tqdm's carriage-return frames into lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        frame = text.replace("\r", "").replace("\x1b[A", "").rstrip("\n")
        if frame.strip():
            self.stream.write(frame + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Any = None, *, file=None, **kwargs):
    """A tqdm bar on ``file`` (default stderr), used by every bar of jaxdissect.

    Args:
      iterable: what to iterate over, or None for a bar updated by hand.
      file: the stream; stderr when None.
      **kwargs: tqdm's arguments (``desc``, ``total``, ``unit``, ``disable``, ...).

    Returns:
      A ``tqdm`` instance. On a terminal (or a notebook, where ``tqdm.auto`` draws a
      widget) it is tqdm's usual bar; otherwise it writes a line at most every
      ``LOG_INTERVAL`` seconds, and a last one when the bar closes.
    """
    from tqdm import std
    from tqdm.auto import tqdm as auto

    stream = sys.stderr if file is None else file
    notebook = any(cls.__name__ == "tqdm_notebook" for cls in auto.__mro__)
    if notebook or is_terminal(stream):
        return auto(iterable, file=file, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL)
    kwargs.setdefault("maxinterval", max(LOG_INTERVAL, kwargs["mininterval"]))
    kwargs.setdefault("dynamic_ncols", False)
    kwargs.setdefault("ncols", 100)
    return std.tqdm(iterable, file=_Lines(stream), **kwargs)
