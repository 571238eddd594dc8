"""Compositional explanations: beam search against the exact search on one problem.

    python -m bench.formulas [--images 2000] [--units 512] [--length 3] [--beam 10]
                             [--labels-per-unit 40] [--kernel auto] [--workdir runs/bench-formulas]
                             [--result bench/results/cpu-2core-formulas.txt]

Writes (or reuses) a synthetic probe of ``--images`` 64 px images (32x32 labels) and draws
``--units`` units whose 8x8 maps are noisy, average-pooled masks of random formulas of the
probe's concepts (so that formulas explain them, as in a trained network); then times the
stages of ``explain.explain``: thresholds and packed masks, candidates, beam search,
exact search. Prints the machine, the seconds of each, the whole ``explain`` at beam
(masks, candidates, beam search) and with ``--exact`` (also the exact search), the exact/beam
ratios, the problem's size, the exact search's expansions, the share of units certified,
and the share of beam results below the optimum; ``--result PATH`` also writes them there.
The defaults are the issue's CPU target: 2,000 images x 512 units, length 3, beam 10.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from jaxdissect.compositional.explain import explain
from jaxdissect.compositional.formulas import concept_masks
from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import open_broden
from jaxdissect.data.cache import load_label_arrays
from jaxdissect.data.synthetic.world import write_probe
from jaxdissect.kernels import kernel_name


def planted_features(labels, num_images, label_size, units, seed=0, size=8) -> np.ndarray:
    """(N, size, size, U) maps: average-pooled masks of random formulas (A, A OR B,
    A AND NOT B, (A OR B) AND C) of frequent concepts, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    numbers = np.arange(1, int(np.max(labels.slot_labels)) + 1)
    masks = concept_masks(
        labels.label_planes(0, num_images), np.asarray(labels.image_labels[:num_images]), numbers
    ).reshape(len(numbers), num_images, *label_size)
    frequent = np.argsort(-masks.sum((1, 2, 3)))[:60]
    pool = label_size[0] // size
    out = np.zeros((num_images, size, size, units), np.float32)
    for unit in range(units):
        a, b, c = (masks[i] for i in rng.choice(frequent, 3, replace=False))
        shape = rng.integers(4)
        mask = [a, a | b, a & ~b, (a | b) & c][shape].astype(np.float32)
        pooled = mask.reshape(num_images, size, pool, size, pool).mean((2, 4))
        out[..., unit] = pooled + 0.3 * rng.standard_normal(pooled.shape)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--length", type=int, default=3)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--labels-per-unit", type=int, default=40)
    parser.add_argument("--kernel", choices=("auto", "cpu", "xla"), default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-formulas"))
    parser.add_argument("--result", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    from bench.whole_process import machine

    lines = [
        f"# python -m bench.formulas {' '.join(sys.argv[1:] if argv is None else argv)} "
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
    run = lambda: explain(  # noqa: E731
        dataset, features, config, length=args.length, beam=args.beam, exact=True,
        labels_per_unit=args.labels_per_unit, labels=labels, progress=False,
    )  # fmt: skip
    run_start = time.perf_counter()
    explain(  # compile on a small problem first: the figures below are warm
        dataset, np.ascontiguousarray(features[..., :2]), config, length=args.length, beam=args.beam, exact=True,
        labels_per_unit=args.labels_per_unit, labels=labels, progress=False,
    )  # fmt: skip
    warmup = time.perf_counter() - run_start
    result = run()
    seconds = result.seconds
    exact, beam = result.exact, result.beam
    problem = result.problem
    lines.append(
        f"problem: {args.images} images of {dataset.label_size[0]}x{dataset.label_size[1]} "
        f"labels, {args.units} units, {len(problem.concept_labels)} concepts, "
        f"{args.labels_per_unit} candidates per unit, length {args.length}, beam {args.beam}; "
        f"packed masks {(problem.unit_bits.nbytes + problem.concept_bits.nbytes) / 2**20:.0f} "
        f"MiB; counts by the {kernel_name(config)} kernel"
    )
    whole_beam = seconds["masks"] + seconds["beam"]
    whole_exact = whole_beam + seconds["exact"]
    lines += [
        f"warm-up (compilation, 2 units): {warmup:.1f} s",
        f"thresholds + masks + candidates: {seconds['masks']:.1f} s",
        f"beam search:  {seconds['beam']:.1f} s ({beam.expansions.sum()} expansions)",
        f"exact search: {seconds['exact']:.1f} s ({exact.expansions.sum()} expansions, "
        f"{exact.expansions.mean():.1f} per unit), {seconds['exact'] / seconds['beam']:.1f}x "
        "the beam search",
        f"whole explain: {whole_beam:.1f} s at beam; {whole_exact:.1f} s with --exact (also "
        f"runs the beam), {whole_exact / whole_beam:.1f}x",
        f"certified: {exact.certified.mean():.1%} of units",
    ]
    below = beam.iou < exact.iou - 1e-12
    lines.append(
        f"beam below the optimum: {below.mean():.1%} of units (mean gap "
        f"{(exact.iou - beam.iou)[below].mean() if below.any() else 0:.4f}); mean IoU beam "
        f"{beam.iou.mean():.4f}, exact {exact.iou.mean():.4f}"
    )
    print("\n".join(lines))
    if args.result is not None:
        args.result.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
