"""The CPU backend's two passes, and their compiled kernels, against the NumPy baseline.

    python -m bench.passes_cpu [--images 1500] [--repeats 3] [--baseline-images 300]

The whole-process workload (``bench.whole_process``), drawn in memory: 7x7x512 ReLU-like
features (``relu_features``), 112x112 Broden-like labels in 4 planes (``broden_like``).
Pass 1 (thresholds, with the report's top images as the CLI keeps them) against
``numpy.quantile``; pass 2 (the tally, Lite's union rule) against ``bench.lite_loop`` on the
first ``--baseline-images`` images. Each figure is the median of ``--repeats`` runs, in
images/s; the kernels' own shares are timed by calling them batch by batch as the backend
does. Asserts thresholds bit-identical to NumPy's and counts identical to the loop's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numba
import numpy as np

from bench.lite_loop import lite_tally
from bench.tally_accelerator import subset, synthetic_dataset
from bench.workload import broden_like, relu_features
from jaxdissect.config import DissectConfig
from jaxdissect.passes import compute_tally, compute_thresholds
from jaxdissect.sources import features_source
from jaxdissect.stats.cpu_quantile import cpu_quantile_init, cpu_quantile_update
from jaxdissect.stats.cpu_tally import _slot_areas, _unit_counts, axis_cells, cpu_tally_batch

QUANTILE = 0.005


def median_seconds(repeats: int, fn, *args, **kwargs):
    """(fn's last result, the median of ``repeats`` wall times)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def quantile_kernel(features, batch_size):
    """Pass 1's kernel alone: ``cpu_quantile_update`` batch by batch."""
    n, height, width, units = features.shape
    state = cpu_quantile_init(units, QUANTILE, n * height * width)
    for start in range(0, n, batch_size):
        cpu_quantile_update(state, features[start : start + batch_size])
    return state


def tally_kernels(features, thresholds, labels, dataset, batch_size):
    """Seconds in ``_slot_areas`` and in ``_unit_counts`` over all batches, the arguments
    prepared outside the timing (every category marked present: these counts are not
    compared, the pass's are)."""
    n, height, width, units = features.shape
    rows, columns = axis_cells(112, height), axis_cells(112, width)
    category = np.asarray(dataset.label_category, np.int64)
    num_categories = len(dataset.categories)
    slot_seconds = unit_seconds = 0.0
    intersection = np.zeros((units, len(category)), np.int64)
    unit_area = np.zeros((units, num_categories), np.int64)
    for start in range(0, n, batch_size):
        planes = labels.slot_planes[start : start + batch_size]
        slot_labels = np.array(labels.slot_labels[start : start + batch_size], np.int64)
        image_labels = np.array(labels.image_labels[start : start + batch_size], np.int64)
        began = time.perf_counter()
        _slot_areas(planes, slot_labels.shape[1])
        slot_seconds += time.perf_counter() - began
        acts = np.ascontiguousarray(np.moveaxis(features[start : start + batch_size], -1, 1))
        present = np.ones((len(planes), num_categories), bool)
        began = time.perf_counter()
        _unit_counts(
            acts,
            thresholds,
            planes,
            slot_labels,
            image_labels,
            present,
            category,
            present,
            tuple(rows),
            tuple(columns),
            True,
            intersection,
            unit_area,
        )
        unit_seconds += time.perf_counter() - began
    return slot_seconds, unit_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=DissectConfig.batch_size)
    args = parser.parse_args(argv)

    n = args.images
    features = relu_features(n)
    labels = broden_like(n, 0, 112)
    labels = type(labels)(*(np.asarray(a) for a in labels))
    # The CLI reads read-only memory maps of the decoded cache.
    labels.slot_planes.flags.writeable = False
    dataset = synthetic_dataset(n, 112)
    source, shapes = features_source(features)
    config = DissectConfig(batch_size=args.batch_size, union="lite", kernel="cpu")
    print(f"machine: {os.cpu_count()} CPU cores; Numba threads {numba.get_num_threads()}")
    print(
        f"workload: {n} images, {features.shape[1:]} features, 112x112 labels in "
        f"{labels.slot_planes.shape[1]} planes; batches of {args.batch_size}; "
        f"median of {args.repeats} runs"
    )

    few = min(args.batch_size, n)  # compiles (or loads Numba's cache) outside the timing
    warm = compute_thresholds(source, few, shapes, config, progress=False)
    compute_tally(
        source, subset(labels, few), dataclasses.replace(dataset, images=dataset.images[:few]),
        warm, shapes, config, progress=False,
    )  # fmt: skip

    reshaped = features.reshape(-1, features.shape[-1])
    expected, t_numpy = median_seconds(
        args.repeats, lambda: np.quantile(reshaped, 1 - QUANTILE, axis=0).astype(np.float32)
    )
    thresholds, t_pass1 = median_seconds(
        args.repeats, compute_thresholds, source, n, shapes, config, progress=False
    )
    np.testing.assert_array_equal(thresholds["features"].thresholds, expected)
    _, t_fold = median_seconds(args.repeats, quantile_kernel, features, args.batch_size)
    print(
        f"pass 1 (thresholds + top images): {n / t_pass1:,.0f} img/s ({t_pass1:.3f} s); "
        f"cpu_quantile_update alone {n / t_fold:,.0f} img/s ({t_fold:.3f} s); "
        f"numpy.quantile {n / t_numpy:,.0f} img/s ({t_numpy:.3f} s); "
        f"pass 1 / numpy {t_numpy / t_pass1:.2f}x; thresholds bit-identical"
    )

    counts, t_pass2 = median_seconds(
        args.repeats, compute_tally, source, labels, dataset, thresholds, shapes, config,
        progress=False,
    )  # fmt: skip
    kernel_times = [
        tally_kernels(features, expected, labels, dataset, args.batch_size)
        for _ in range(args.repeats)
    ]
    t_slots = statistics.median(t for t, _ in kernel_times)
    t_units = statistics.median(t for _, t in kernel_times)
    few = min(args.baseline_images, n)
    lite, t_lite = median_seconds(
        args.repeats, lite_tally, features[:few], expected, labels.label_planes(0, few),
        np.asarray(labels.image_labels[:few]), dataset.label_category, len(dataset.categories),
    )  # fmt: skip
    totals = tuple(np.zeros_like(a) for a in lite)
    cpu_tally_batch(
        totals, features[:few], expected, *subset(labels, few), dataset.label_category,
        axis_cells(112, 7), axis_cells(112, 7), union="lite",
    )  # fmt: skip
    for got, want in zip(totals, lite, strict=True):
        np.testing.assert_array_equal(got, want)
    lite_rate = few / t_lite
    print(
        f"pass 2 (tally): {n / t_pass2:,.0f} img/s ({t_pass2:.3f} s); _slot_areas "
        f"{n / t_slots:,.0f} img/s ({t_slots:.3f} s); _unit_counts {n / t_units:,.0f} img/s "
        f"({t_units:.3f} s); Lite-style loop {lite_rate:,.0f} img/s (on {few} images, counts "
        f"identical); pass 2 / loop {n / t_pass2 / lite_rate:.1f}x"
    )
    assert counts["features"][1].sum() > 0


if __name__ == "__main__":
    main()
