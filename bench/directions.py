"""Concept directions (Net2Vec): every concept of a 512-unit layer on a 2,000-image probe.

    python -m bench.directions [--images 2000] [--units 512] [--epochs 10]
                               [--workdir runs/bench-directions]
                               [--result bench/results/cpu-2core-directions.txt]

Writes (or reuses) a synthetic probe of ``--images`` 64 px images (32x32 labels) and draws
``--units`` units whose 8x8 maps are noisy, average-pooled masks of random formulas of the
probe's concepts (``bench.formulas.planted_features``, as in a trained network); then runs
``directions.directions`` twice in one process: the first run pays for compiling its jitted
steps (the Numba kernels of the units' passes come compiled from their disk cache after any
earlier run), the second is warm. Prints the machine, both runs' wall times and each
stage's (activations, the units' thresholds and counts, training, thresholds and scores),
the number of concepts, and the mean held-out IoUs; ``--result PATH`` also writes them
there. The issue's CPU target: at most 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.formulas import planted_features
from jaxdissect.compositional.directions import DirectionConfig, directions
from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import open_broden
from jaxdissect.data.cache import load_label_arrays
from jaxdissect.data.synthetic.world import write_probe
from jaxdissect.kernels import kernel_name


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=DirectionConfig().epochs)
    parser.add_argument("--kernel", choices=("auto", "cpu", "xla"), default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-directions"))
    parser.add_argument("--result", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    from bench.whole_process import machine

    lines = [
        f"# python -m bench.directions {' '.join(sys.argv[1:] if argv is None else argv)} "
        f"({time.strftime('%Y-%m-%d')})",
        f"machine: {machine()}",
    ]
    probe = args.workdir / f"probe-{args.images}"
    if not (probe / "index.csv").is_file():
        write_probe(probe, args.images, 0, progress=False)
    dataset = open_broden(probe)
    labels = load_label_arrays(dataset, progress=False)
    features = planted_features(labels, args.images, dataset.label_size, args.units)
    config = DissectConfig(batch_size=64, kernel=args.kernel)
    settings = DirectionConfig(epochs=args.epochs)
    runs = []
    for _ in range(2):
        started = time.perf_counter()
        found = directions(
            dataset, features, config, settings=settings, labels=labels, progress=False
        )
        runs.append((time.perf_counter() - started, found))
    (cold, found), (warm, again) = runs
    rows = found.rows
    steps = found.losses.shape[0]
    lines += [
        f"problem: {args.images} images of {dataset.label_size[0]}x{dataset.label_size[1]} "
        f"labels, {args.units} units of {features.shape[1]}x{features.shape[2]}, "
        f"{len(rows)} concepts with >= {settings.min_pixels} label pixels on both sides; "
        f"{len(found.train_rows)} train / {len(found.heldout_rows)} held-out images; "
        f"{settings.epochs} epochs, {steps} Adam steps of {settings.batch_size} images; "
        f"units' passes by the {kernel_name(config)} kernel",
        f"first run (compiles the jitted steps): {cold:.1f} s",
        f"second run (warm): {warm:.1f} s",
        "stages of the first run: "
        + ", ".join(f"{name} {value:.1f} s" for name, value in found.seconds.items()),
        "stages of the second run: "
        + ", ".join(f"{name} {value:.1f} s" for name, value in again.seconds.items()),
        f"mean held-out IoU: directions {np.mean([r['iou_direction'] for r in rows]):.4f}, "
        f"best units {np.mean([r['iou_best_unit'] for r in rows]):.4f}, chance "
        f"{np.mean([r['iou_chance'] for r in rows]):.4f}; "
        f"{sum(r['iou_direction'] >= r['iou_best_unit'] + 0.05 for r in rows)} directions "
        "beat their best unit by >= 0.05",
    ]
    print("\n".join(lines))
    if args.result is not None:
        args.result.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
