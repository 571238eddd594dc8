"""The pass loop's read-ahead: a consumer that stops early stops the reading thread."""

import threading

import pytest

from jaxdissect.passes import batch_ranges, prefetch


def _reader_threads() -> int:
    return sum(t.name != "MainThread" and t.is_alive() for t in threading.enumerate())


def test_prefetch_keeps_order_and_reraises_errors():
    assert list(prefetch(iter(range(10)))) == list(range(10))

    def failing():
        yield 1
        raise ValueError("bad batch 2")

    with pytest.raises(ValueError, match="bad batch 2"):
        list(prefetch(failing()))


def test_a_consumer_that_stops_early_stops_the_thread():
    before = _reader_threads()
    items = prefetch(iter(range(1000)), depth=2)  # the reader fills its queue and waits
    assert next(items) == 0
    items.close()  # what a break or an error in the pass loop does to the generator
    assert _reader_threads() == before


def test_batch_ranges_cover_every_image_once():
    assert batch_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_ranges(8, 4) == [(0, 4), (4, 8)]
