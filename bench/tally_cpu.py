"""CPU tally against a NetDissect-Lite-style NumPy loop, on the same features and labels.

    python -m bench.tally_cpu [--images 1000] [--units 512] [--size 7]

ResNet-18 layer4's shape by default (7x7x512 activations, 112x112 labels, Broden-like
label statistics from ``bench.workload``). Prints images/s of each stage (threshold pass,
tally pass, total) and of the baseline loop, with their ratio; asserts that all counts are
identical (Lite's union rule).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.lite_loop import lite_tally
from bench.tally_accelerator import synthetic_dataset, timed
from bench.workload import CATEGORIES, broden_like, relu_features
from jaxdissect.dissect import DissectConfig, compute_tally, compute_thresholds, features_source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--label-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--baseline-images", type=int, default=300)
    args = parser.parse_args(argv)

    n = args.images
    labels = broden_like(n, 0, args.label_size)
    features = relu_features(n, (args.size, args.size, args.units))
    dataset = synthetic_dataset(n, args.label_size)
    source, shape = features_source(features)
    print(f"workload: {n} images, {shape['features']} activations, {args.label_size}^2 labels")

    results = {}
    for skip in (True, False):
        config = DissectConfig(batch_size=args.batch_size, union="lite", skip_inactive=skip)
        warm = synthetic_dataset(args.batch_size, args.label_size)
        warm_labels = type(labels)(*(a[: args.batch_size] for a in labels))
        compute_tally(
            source,
            warm_labels,
            warm,
            compute_thresholds(source, args.batch_size, shape, config, progress=False),
            shape,
            config,
            progress=False,
        )  # compile
        thresholds, t_threshold = timed(
            compute_thresholds, source, n, shape, config, progress=False
        )
        counts, t_tally = timed(
            compute_tally, source, labels, dataset, thresholds, shape, config, progress=False
        )
        results[skip] = counts["features"]
        name = "skipping inactive units" if skip else "every unit"
        print(
            f"ours ({name}): thresholds {n / t_threshold:,.0f} images/s, tally "
            f"{n / t_tally:,.0f} images/s, total {n / (t_threshold + t_tally):,.0f} images/s "
            f"(at most {thresholds['features'].max_active} of {args.units} units active per image)"
        )
        if skip:
            t_ours = t_tally
    for a, b in zip(results[True], results[False], strict=True):
        np.testing.assert_array_equal(a, b)

    few = min(args.baseline_images, n)
    start = time.perf_counter()
    lite = lite_tally(
        features[:few],
        thresholds["features"].thresholds,
        labels.label_planes(0, few),
        labels.image_labels[:few],
        dataset.label_category,
        len(CATEGORIES),
    )
    t_lite = (time.perf_counter() - start) / few * n
    config = DissectConfig(batch_size=args.batch_size, union="lite")
    subset = type(labels)(*(a[:few] for a in labels))
    ours = compute_tally(
        source,
        subset,
        synthetic_dataset(few, args.label_size),
        thresholds,
        shape,
        config,
        progress=False,
    )
    for a, b in zip(lite, ours["features"], strict=True):
        np.testing.assert_array_equal(a, b)
    print(
        f"NetDissect-Lite-style loop: {n / t_lite:,.0f} images/s (timed on {few} images); "
        f"our tally is {t_lite / t_ours:.1f}x faster; counts identical"
    )


if __name__ == "__main__":
    main()
