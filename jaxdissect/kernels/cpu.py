"""The CPU backend: both passes as compiled loops over the CPU cores (Numba), in one process.

Thresholds by ``cpu_quantile`` (the running top-k of ``quantile``, in place), counts by
``cpu_tally`` straight into int64 totals. States are NumPy arrays updated in place.
"""

from __future__ import annotations

import numpy as np

from jaxdissect.dissection import Thresholds
from jaxdissect.kernels.base import Backend, Batch, Statistic
from jaxdissect.kernels.common import (
    INT32_MAX,
    check_finite,
    checked,
    top_images_kept,
    zero_counts,
)
from jaxdissect.stats import quantile


def _read(source, shapes, ranges, first, labels):
    for number, (start, stop) in enumerate(ranges[first:], start=first + 1):
        acts = checked(source(start, stop), shapes, stop - start, start)
        yield Batch(
            number=number,
            start=start,
            acts={layer: np.asarray(a, np.float32) for layer, a in acts.items()},
            indices=np.arange(start, stop, dtype=np.int32),
            valid=np.ones(stop - start, bool),
            labels=None if labels is None else tuple(np.asarray(a[start:stop]) for a in labels),
        )


def _thresholds(layer, shape, num_images, config):
    from jaxdissect.stats.cpu_quantile import cpu_quantile_init, cpu_quantile_update
    from jaxdissect.stats.top_images import (
        TopImagesState,
        top_images_init,
        top_images_merge,
        top_images_update_host,
    )

    height, width, units = shape
    kept = top_images_kept(config, shape)

    def init():
        state = {
            "quantile": cpu_quantile_init(units, config.quantile, num_images * height * width),
            "first_bad": np.asarray(INT32_MAX, np.int64),
            "maxima": np.full((num_images, units), -np.inf, np.float32),
        }
        if kept:
            state["top"] = top_images_init(units, kept, height, width, np)
        return state

    def update(state, batch):
        stop = batch.start + len(batch.indices)
        state["maxima"][batch.start : stop], finite = cpu_quantile_update(
            state["quantile"], batch.acts
        )
        if not finite.all():
            state["first_bad"] = np.minimum(state["first_bad"], batch.start + np.argmin(finite))
        if kept:
            state["top"] = top_images_update_host(state["top"], batch.acts, batch.indices)
        return state

    def merge(a, b):
        merged = {
            "quantile": quantile.QuantileState(
                *(np.array(x) for x in quantile.quantile_merge(a["quantile"], b["quantile"]))
            ),
            "first_bad": np.minimum(a["first_bad"], b["first_bad"]),
            "maxima": np.maximum(a["maxima"], b["maxima"]),
        }
        if kept:
            merged["top"] = TopImagesState(
                *(np.array(x) for x in top_images_merge(a["top"], b["top"]))
            )
        return merged

    def result(state):
        check_finite(state["first_bad"], num_images, layer)
        thresholds = quantile.quantile_result(state["quantile"], config.quantile)
        top = state.get("top")
        return Thresholds(
            thresholds,
            int(np.max(np.sum(state["maxima"] > thresholds, axis=1))),
            None if top is None else np.asarray(top.indices),
            None if top is None else np.asarray(top.maps),
        )

    return Statistic(init, update, merge, result)


def _tally(layer, shape, thresholds, dataset, labels, config):
    from jaxdissect.stats.cpu_tally import axis_cells, cpu_tally_batch  # compiled on first use

    height, width, units = shape
    label_height, label_width = dataset.label_size
    cells = (axis_cells(label_height, height), axis_cells(label_width, width))

    def update(counts, batch):
        cpu_tally_batch(
            counts,
            batch.acts,
            thresholds.thresholds,
            *batch.labels,
            dataset.label_category,
            *cells,
            union=config.union,
        )
        return counts

    return Statistic(
        init=lambda: zero_counts(units, dataset),
        update=update,
        merge=lambda a, b: [x + y for x, y in zip(a, b, strict=True)],
        result=tuple,
    )


def backend(config) -> Backend:
    """The CPU backend for ``config`` (one process; batches of ``config.batch_size``)."""
    return Backend(
        name="cpu",
        batch_size=config.batch_size,
        read=_read,
        thresholds=_thresholds,
        tally=_tally,
        wait=lambda states: None,
    )
