"""The two passes of a dissection, written once for every backend (``kernels``).

Pass 1 finds each unit's threshold (and its most activating images); pass 2 counts the
label areas G, intersections I and unit areas A. Several layers share each pass, so a
model runs twice whatever the number of layers (once, when its outputs are kept; see
``pipeline``). Batches are read ahead in a thread, at most ``IN_FLIGHT`` steps are queued
on the devices, and with ``checkpoints`` the states are saved every few batches so that a
killed run resumes where it stopped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from jaxdissect.checkpoint import PassCheckpoints
from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.data.cache import LabelArrays
from jaxdissect.dissection import Thresholds
from jaxdissect.errors import DissectError
from jaxdissect.kernels import select_backend
from jaxdissect.kernels.base import ActivationSource, Backend, Shapes, Statistic
from jaxdissect.progress import progress_bar
from jaxdissect.timings import mark

# Steps dispatched ahead of the devices at most: JAX dispatches asynchronously, and without a
# bound a fast host would queue every batch of a pass in memory.
IN_FLIGHT = 4


def prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Runs ``items`` (host slicing, padding, device_put) in a thread, ``depth`` ahead, so
    the host side of the next batches overlaps the devices' work on this one. A consumer
    that stops early (an error, a break) stops the thread too."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker():
        try:
            for item in items:
                if not offer(item):
                    return
        except BaseException as error:  # re-raised in the consumer's thread
            offer(error)
            return
        offer(done)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def batch_ranges(num_images: int, batch_size: int) -> list[tuple[int, int]]:
    return [
        (start, min(start + batch_size, num_images)) for start in range(0, num_images, batch_size)
    ]


def run_pass(
    name: str,
    statistics: Mapping[str, Statistic],
    backend: Backend,
    source: ActivationSource,
    shapes: Shapes,
    num_images: int,
    labels: LabelArrays | None = None,
    progress: bool = True,
    checkpoints: PassCheckpoints | None = None,
) -> dict[str, Any]:
    """Folds every batch into each layer's statistic; {layer: result}. A checkpoint holds
    each layer's merged state (``Statistic.collapse``), so a resumed pass continues on any
    placement of the same device count."""
    ranges = batch_ranges(num_images, backend.batch_size)
    states = {layer: statistic.init() for layer, statistic in statistics.items()}

    def merged():
        return {layer: statistics[layer].collapse(state) for layer, state in states.items()}

    key = f"{name}-{backend.name}"
    first = 0
    if checkpoints is not None:
        first, restored = checkpoints.restore(key, merged())
        if restored is not None:
            states = {layer: statistics[layer].expand(s) for layer, s in restored.items()}
    batches = backend.read(source, shapes, ranges, first, labels)
    bar = progress_bar(
        prefetch(batches),
        initial=first,
        total=len(ranges),
        desc=f"{', '.join(shapes)}: {name}",
        unit="batch",
        disable=not progress,
    )
    for batch in bar:
        number = batch.number
        for layer, statistic in statistics.items():
            states[layer] = statistic.update(states[layer], batch._replace(acts=batch.acts[layer]))
        if number == first + 1:  # the first batch carries the one-time costs (kernel loading)
            mark(f"{name} first batch")
        if number % IN_FLIGHT == 0:  # bound the queued batches: memory stays flat
            backend.wait(states)
        if checkpoints is not None:
            checkpoints.save(key, number, merged, last=number == len(ranges))
    return {layer: statistics[layer].result(state) for layer, state in merged().items()}


def compute_thresholds(
    activations: ActivationSource,
    num_images: int,
    shapes: Shapes,
    config: DissectConfig,
    progress: bool = True,
    checkpoints: PassCheckpoints | None = None,
    backend: Backend | None = None,
) -> dict[str, Thresholds]:
    """Pass 1: exact per-unit (1 - q) quantiles of every layer; rejects NaN/inf activations.

    Args:
      activations: ``activations(start, stop)`` returns {layer: (B, h, w, U)} for images
        [start, stop).
      num_images: N.
      shapes: {layer: (h, w, U)}.
      config: the dissection config.
      progress: show a progress bar.
      checkpoints: save the pass's states every few batches, and resume from them.
      backend: where the pass runs (default: ``select_backend(config)``).

    Returns:
      {layer: Thresholds}.
    """
    if num_images < 1:
        raise DissectError(
            f"`num_images` must be >= 1, got {num_images!r}", arguments=("num_images",)
        )
    backend = backend or select_backend(config)
    statistics = {
        layer: backend.thresholds(layer, shape, num_images, config)
        for layer, shape in shapes.items()
    }
    return run_pass(
        "thresholds", statistics, backend, activations, shapes, num_images, None, progress,
        checkpoints,
    )  # fmt: skip


def compute_tally(
    activations: ActivationSource,
    labels: LabelArrays,
    dataset: BrodenDataset,
    thresholds: Mapping[str, Thresholds],
    shapes: Shapes,
    config: DissectConfig,
    progress: bool = True,
    checkpoints: PassCheckpoints | None = None,
    backend: Backend | None = None,
) -> dict[str, tuple]:
    """Pass 2: {layer: (G, I, A)} as int64 host arrays."""
    missing = sorted(set(shapes) - set(thresholds))
    if missing:
        raise DissectError(
            f"`thresholds` has no layer {missing[0]!r} of `shapes` (it has "
            f"{', '.join(sorted(thresholds)) or 'none'})",
            arguments=("thresholds", "shapes"),
        )
    backend = backend or select_backend(config)
    statistics = {
        layer: backend.tally(layer, shape, thresholds[layer], dataset, labels, config)
        for layer, shape in shapes.items()
    }
    return run_pass(
        "tally", statistics, backend, activations, shapes, dataset.num_images, labels,
        progress, checkpoints,
    )  # fmt: skip
