"""CPU tally against a NetDissect-Lite-style NumPy loop, on the same features and labels.

    python -m bench.tally_cpu [--images 2000] [--units 512] [--size 7]
    python -m bench.tally_cpu --dataset BRODEN_DIR --features FEATURES.npy [--layout nchw]

The first form draws a workload of ResNet-18 layer4's shape (7x7x512 activations, 112x112
labels, Broden-like label statistics from ``bench.workload``); the second times your own
Broden-format dataset and features (one layer, N x h x w x U or N x U x h x w). Prints
images/s of each stage (decoded-label cache read, threshold pass, tally pass, total) for
our CPU kernel and our XLA kernel, and of the baseline loop, with the ratio. Asserts that
the CPU kernel's counts are identical to the loop's (Lite's union rule; both upsample with
PIL's arithmetic), and the XLA kernel's too on the drawn workload (exact in float32);
on your features it reports how many of its counts differ, by float32 rounding.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import jax
import numpy as np

from bench.lite_loop import lite_tally
from bench.tally_accelerator import subset, synthetic_dataset, timed
from bench.workload import broden_like, relu_features
from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.passes import compute_tally, compute_thresholds
from jaxdissect.sources import features_source


def _workload(args):
    """(features source, shapes, labels, dataset, seconds to read the decoded-label cache)."""
    if args.dataset is None:
        labels = broden_like(args.images, 0, args.label_size)
        features = relu_features(args.images, (args.size, args.size, args.units))
        dataset = synthetic_dataset(args.images, args.label_size)
        return (*features_source(features), labels, dataset, None)
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_label_arrays

    dataset = open_broden(args.dataset)
    load_label_arrays(dataset, progress=True)  # decodes once; then timed from the cache
    start = time.perf_counter()
    labels = subset(load_label_arrays(dataset, progress=False), dataset.num_images)
    seconds = time.perf_counter() - start
    features = np.load(args.features, mmap_mode="r")
    if len(features) != dataset.num_images:
        raise SystemExit(f"{args.features}: {len(features)} rows for {dataset.num_images} images")
    return (
        *features_source(np.asarray(features, np.float32), args.layout),
        labels,
        dataset,
        seconds,
    )


def _head(dataset: BrodenDataset, count: int) -> BrodenDataset:
    """The dataset's first ``count`` images."""
    return dataclasses.replace(
        dataset,
        images=dataset.images[:count],
        pixel_planes=dataset.pixel_planes[:count],
        image_labels=dataset.image_labels[:count],
    )


def _tally(source, labels, dataset, thresholds, shapes, kernel, batch_size):
    config = DissectConfig(batch_size=batch_size, union="lite", kernel=kernel)
    counts, seconds = timed(
        compute_tally, source, labels, dataset, thresholds, shapes, config, progress=False
    )
    return counts["features"], seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--label-size", type=int, default=112)
    parser.add_argument("--dataset", type=Path, help="a Broden-format folder (with --features)")
    parser.add_argument("--features", type=Path, help="one layer's activations, .npy")
    parser.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline-images", type=int, default=300)
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.dataset is None) != (args.features is None):
        parser.error("--dataset and --features go together")

    source, shapes, labels, dataset, t_cache = _workload(args)
    n = dataset.num_images
    print(f"machine: {os.cpu_count()} CPU cores, JAX on {jax.default_backend()}")
    print(
        f"workload: {n} images, {shapes['features']} activations, {dataset.label_size} "
        f"labels in {labels.slot_planes.shape[1]} pixel planes"
    )
    if t_cache is not None:
        print(f"decoded-label cache read: {n / t_cache:,.0f} images/s")

    config = DissectConfig(batch_size=args.batch_size, union="lite")
    few = min(args.batch_size, n)
    warm = compute_thresholds(source, few, shapes, config, progress=False)
    start = time.perf_counter()  # compiles (numba then caches the machine code on disk)
    for kernel in ("cpu", "xla"):
        _tally(source, labels, _head(dataset, few), warm, shapes, kernel, args.batch_size)
    print(f"compilation and warm-up: {time.perf_counter() - start:.1f} s (not counted below)")

    thresholds, t_threshold = timed(compute_thresholds, source, n, shapes, config, progress=False)
    units = shapes["features"][2]
    print(
        f"threshold pass: {n / t_threshold:,.0f} images/s "
        f"(at most {thresholds['features'].max_active} of {units} units active per image)"
    )
    ours, t_ours = _tally(source, labels, dataset, thresholds, shapes, "cpu", args.batch_size)
    print(
        f"tally, our CPU kernel: {n / t_ours:,.0f} images/s; "
        f"total (thresholds + tally): {n / (t_threshold + t_ours):,.0f} images/s"
    )

    xla, t_xla = _tally(source, labels, dataset, thresholds, shapes, "xla", args.batch_size)
    differ = sum(int((a != b).sum()) for a, b in zip(xla, ours, strict=True))
    if args.dataset is None:  # the workload's values make every upsampling exact
        assert differ == 0, f"{differ} counts differ between the CPU and XLA kernels"
    worst = max(int(np.abs(a - b).max()) for a, b in zip(xla, ours, strict=True))
    print(
        f"tally, our XLA kernel (skipping inactive units): {n / t_xla:,.0f} images/s; "
        + (
            "counts identical to the CPU kernel's"
            if differ == 0
            else f"{differ} of {sum(a.size for a in ours)} counts differ from the CPU "
            f"kernel's, by at most {worst} (float32 rounding at the threshold)"
        )
    )

    lite_rate = _lite_rate(args, source, labels, dataset, thresholds, shapes)
    print(
        f"ratio: our CPU kernel {n / t_ours / lite_rate:.1f}x, our XLA kernel "
        f"{n / t_xla / lite_rate:.1f}x the loop's tally rate"
    )


def _lite_rate(args, source, labels, dataset, thresholds, shapes) -> float:
    """Images/s of the NetDissect-Lite-style loop on a few images, its counts asserted
    identical to our CPU kernel's."""
    few = min(args.baseline_images, dataset.num_images)
    start = time.perf_counter()
    lite = lite_tally(
        np.asarray(source(0, few)["features"]),
        thresholds["features"].thresholds,
        labels.label_planes(0, few),
        np.asarray(labels.image_labels[:few]),
        dataset.label_category,
        len(dataset.categories),
    )
    t_lite = time.perf_counter() - start
    mine, _ = _tally(
        source, subset(labels, few), _head(dataset, few), thresholds, shapes, "cpu", args.batch_size
    )
    for a, b in zip(lite, mine, strict=True):
        np.testing.assert_array_equal(a, b)
    lite_rate = few / t_lite
    print(
        f"NetDissect-Lite-style loop: {lite_rate:,.0f} images/s (on {few} images; counts "
        f"identical to ours)"
    )
    return lite_rate


if __name__ == "__main__":
    main()
