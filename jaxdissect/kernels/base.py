"""The interface every backend implements, so that each pass is written once (``passes``).

In the spirit of optax's ``GradientTransformation``: a statistic is a NamedTuple of pure-ish
functions over a pytree state, its static settings (quantile, union rule, shapes) held in
closures. A backend (``cpu``, ``xla``; a Pallas or Triton kernel would be a third file)
supplies the two statistics of a dissection for one layer and the host side that brings
batches to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.data.cache import LabelArrays
from jaxdissect.dissection import Thresholds

# A function from (start, stop) image indices to {layer: (B, h, w, U) float array}: NumPy
# (a features file) or jax.Arrays already on the devices (a model's output).
ActivationSource = Callable[[int, int], Mapping[str, Any]]
Shapes = Mapping[str, tuple[int, int, int]]
State = Any


class Batch(NamedTuple):
    """One batch as a backend's statistics receive it.

    Attributes:
      number: 1-based position of the batch in its pass.
      start: the batch's first image (index.csv order).
      acts: {layer: (B, h, w, U) float32} in the pass loop; one layer's array in ``update``.
      indices: (B,) int32 each row's image index.
      valid: (B,) bool, False on the rows that pad the last batch.
      labels: pass 2 only: (slot_planes, slot_labels, image_labels) of the batch's rows.
    """

    number: int
    start: int
    acts: Any
    indices: Any
    valid: Any
    labels: tuple | None = None


def _same(state: State) -> State:
    return state


class Statistic(NamedTuple):
    """One layer's statistic in one pass.

    ``init() -> state``; ``update(state, batch) -> state`` folds in a batch (``batch.acts``
    is this layer's array); ``merge(a, b) -> merged`` combines two merged states that saw
    disjoint images; ``result(merged)`` finishes on the host.

    A backend whose devices keep states of their own (``xla``: a leading device axis) gives
    ``collapse(state) -> merged``, the devices' states combined with ``merge`` on the host
    (once per pass, and for each checkpoint: what a checkpoint holds), and
    ``expand(merged) -> state``, the inverse placement (a restored checkpoint on one device,
    fresh states on the others). Where a state is one state already, both are the identity.
    ``collapse`` raises rather than merge a state whose counts are no longer exact (a tally
    state's ``overflow`` or ``saturated`` flag).
    """

    init: Callable[[], State]
    update: Callable[[State, Batch], State]
    merge: Callable[[State, State], State]
    result: Callable[[State], Any]
    collapse: Callable[[State], State] = _same
    expand: Callable[[State], State] = _same


class Backend(NamedTuple):
    """Where and how both passes run.

    Attributes:
      name: "cpu" or "xla" (checkpoints of one backend are not restored by another).
      batch_size: images per batch.
      read: ``read(source, shapes, ranges, first, labels)`` yields a Batch per (start,
        stop) of ``ranges[first:]``, on the host side: slicing, padding, placing on
        devices. ``labels`` is None in pass 1.
      thresholds: ``thresholds(layer, shape, num_images, config)``: pass 1's Statistic,
        whose result is a ``Thresholds``.
      tally: ``tally(layer, shape, thresholds, dataset, labels, config)``: pass 2's
        Statistic, whose result is (G, I, A) as int64 host arrays.
      wait: blocks until the queued work on ``states`` is done (bounds what is in flight).
    """

    name: str
    batch_size: int
    read: Callable[
        [ActivationSource, Shapes, Sequence[tuple[int, int]], int, LabelArrays | None],
        Iterator[Batch],
    ]
    thresholds: Callable[[str, tuple[int, int, int], int, DissectConfig], Statistic]
    tally: Callable[
        [str, tuple[int, int, int], Thresholds, BrodenDataset, LabelArrays, DissectConfig],
        Statistic,
    ]
    wait: Callable[[State], None]
