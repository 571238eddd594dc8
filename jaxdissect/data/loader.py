"""A small deterministic batch loader over any random-access source.

A source is anything with ``len`` and ``source[i] -> {"image": ..., "label": ...}``: a
``tfds.data_source`` split, or ``ArraySource`` over NumPy arrays. Batch order depends only
on (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would; a
background thread keeps ``prefetch`` batches ready.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from jaxdissect.errors import DissectError


class ArraySource(Sequence):
    """Random access over arrays of equal length: ``source[i] -> {name: array[i]}``."""

    def __init__(self, **arrays: np.ndarray):
        if not arrays:
            raise DissectError("ArraySource needs at least one array, given by name")
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise DissectError(
                "ArraySource: the arrays must share their length, got "
                + ", ".join(f"`{name}` {len(a)}" for name, a in arrays.items()),
                arguments=tuple(arrays),
            )
        self._arrays = arrays
        self._length = lengths.pop()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        return {name: array[index] for name, array in self._arrays.items()}


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The example order of one epoch (a permutation drawn from (seed, epoch))."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def _collate(examples: list[dict]) -> dict[str, np.ndarray]:
    return {name: np.stack([e[name] for e in examples]) for name in examples[0]}


def iterate_batches(
    source: Sequence,
    batch_size: int,
    seed: int = 0,
    start_step: int = 0,
    shuffle: bool = True,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches (full ones only), starting at global step ``start_step``.

    Step s takes positions [s * batch_size, (s + 1) * batch_size) of the concatenated epoch
    orders, so resuming at any step reproduces the same stream.
    """
    if batch_size < 1 or batch_size > len(source):
        raise DissectError(
            f"`batch_size` must lie in [1, {len(source)}] (the examples in `source`), "
            f"got {batch_size!r}",
            arguments=("batch_size",),
        )
    per_epoch = len(source) // batch_size

    def produce(step: int) -> dict[str, np.ndarray]:
        epoch, offset = divmod(step, per_epoch)
        order = epoch_order(len(source), seed, epoch, shuffle)
        chosen = order[offset * batch_size : (offset + 1) * batch_size]
        return _collate([source[int(i)] for i in chosen])

    if prefetch < 1:
        step = start_step
        while True:
            yield produce(step)
            step += 1

    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def worker():
        step = start_step
        while not stop.is_set():
            try:
                batch = produce(step)
            except Exception as error:  # surfaced in the consumer's thread
                ready.put(error)
                return
            while not stop.is_set():
                try:
                    ready.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue
            step += 1

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()


def rotation_pretext(images: np.ndarray, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Self-supervised rotation prediction (Gidaris et al. 2018): each image turned by
    k * 90 degrees, k drawn from (seed, step); returns (rotated images, k)."""
    turns = np.random.default_rng([seed, step, 90]).integers(0, 4, len(images))
    rotated = np.stack(
        [np.rot90(image, k, axes=(0, 1)) for image, k in zip(images, turns, strict=True)]
    )
    return rotated, turns.astype(np.int32)
