"""How long one layer's HTML report takes: ``write_layer_report`` on a Broden-shaped layer.

    python -m bench.report_speed [--units 512] [--images 1500] [--image-size 224]
        [--repeats 3] [--baseline-tree DIR]

Builds, in a scratch folder, a dissection's output as the report reads it: results.json
(every unit labelled, a third above the IoU threshold), counts.npz with each unit's k=8
top images and their 7x7 maps (the top images of ``bench.workload.relu_features``, chosen
as the dissection chooses them) and the probe images (N, S, S, 3) uint8, smooth blocks as
``bench.whole_process`` draws them. Each repeat then times ``write_layer_report`` in a
fresh process (so that no run inherits another's warm caches), for this tree and, with
``--baseline-tree`` (e.g. ``git archive main | tar -x -C /tmp/main``), for another tree's
implementation, interleaved; only the call is timed, not the imports. Prints the seconds,
the ratio per interleaved pair and the report's size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.whole_process import machine, spread
from bench.workload import relu_features

TOP = 8
CATEGORIES = ("object", "part", "scene", "material", "texture", "color")

# Run in a fresh process with PYTHONPATH set to the tree under test.
TIMED = """
import sys, time, numpy as np
from jaxdissect.report.html import write_layer_report
images = np.load(sys.argv[2], mmap_mode="r")
images = np.ascontiguousarray(images)  # the pipeline passes an in-memory array
start = time.perf_counter()
write_layer_report(sys.argv[1], images)
print(time.perf_counter() - start)
import jaxdissect
print(jaxdissect.__file__)
"""


def build(folder: Path, units: int, num_images: int, image_size: int) -> Path:
    """Writes folder/out (results.json, counts.npz) and folder/images.npy; returns out."""
    rng = np.random.default_rng(3)
    features = relu_features(num_images, (7, 7, units))
    maxima = features.max(axis=(1, 2))  # (N, U)
    # The dissection's order: descending maximum, lower image index first on ties.
    top = np.argsort(-maxima, axis=0, kind="stable")[:TOP].T  # (U, k)
    top_maps = np.stack([features[top[u], :, :, u] for u in range(units)])  # (U, k, 7, 7)
    thresholds = np.quantile(features.reshape(-1, units), 0.995, axis=0).astype(np.float32)
    out = folder / "out"
    out.mkdir(parents=True)
    np.savez(out / "counts.npz", top_indices=top.astype(np.int64), top_maps=top_maps)

    scores = rng.uniform(0, 0.12, units)
    chosen = rng.integers(0, len(CATEGORIES), units)
    rows = []
    for u in range(units):
        row = {
            "unit": u + 1,
            "category": CATEGORIES[chosen[u]],
            "label": f"{CATEGORIES[chosen[u]]}-{u % 37}",
            "score": float(scores[u]),
        }
        for c in CATEGORIES:
            row.update({f"{c}-label": f"{c}-{u % 37}", f"{c}-truth": 10, f"{c}-activation": 5})
            row.update({f"{c}-intersect": 1, f"{c}-iou": 0.0})
        rows.append(row)
    rows.sort(key=lambda r: -r["score"])
    detectors = [r for r in rows if r["score"] > 0.04]
    per_category = {c: sum(r["category"] == c for r in detectors) for c in CATEGORIES}
    unique = {c: len({r["label"] for r in detectors if r["category"] == c}) for c in CATEGORIES}
    results = {
        "layer": "bench",
        "dataset": "synthetic",
        "images": num_images,
        "categories": list(CATEGORIES),
        "config": {"quantile": 0.005, "iou_threshold": 0.04},
        "summary": {
            "units": units,
            "iou_threshold": 0.04,
            "detectors": len(detectors),
            "detectors_per_category": per_category,
            "unique_top_label": {"total": sum(unique.values()), "per_category": unique},
            "unique_per_category": {"total": sum(unique.values()), "per_category": unique},
        },
        "thresholds": [float(t) for t in thresholds],
        "units": rows,
    }
    (out / "results.json").write_text(json.dumps(results))

    # Smooth blocks, not noise: JPEG files of a photograph's size (as bench.whole_process).
    block = max(1, image_size // 28)
    coarse = rng.integers(0, 256, (num_images, -(-image_size // block), -(-image_size // block), 3))
    pixels = np.repeat(np.repeat(coarse.astype(np.uint8), block, axis=1), block, axis=2)
    np.save(folder / "images.npy", pixels[:, :image_size, :image_size])
    return out


def report_size(out: Path) -> tuple[int, int]:
    """(files, bytes) of report.html and the report folder."""
    paths = [out / "report.html", *(out / "report").iterdir()]
    return len(paths), sum(p.stat().st_size for p in paths)


def time_once(out: Path, images: Path, tree: Path) -> float:
    shutil.rmtree(out / "report", ignore_errors=True)  # a fresh folder, as dissect writes
    (out / "report.html").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}  # and cwd: `python -c` puts it first
    done = subprocess.run(
        [sys.executable, "-c", TIMED, str(out), str(images)],
        env=env, capture_output=True, text=True, check=False, cwd=tree,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the report failed in {tree}:\n{done.stderr}")
    seconds, module = done.stdout.split()[-2:]
    if not Path(module).is_relative_to(tree):
        raise SystemExit(f"{module} was imported, not the one in {tree}")
    return float(seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-tree", type=Path, help="another tree's report, interleaved")
    parser.add_argument("--result", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    lines = [f"command: python -m bench.report_speed {' '.join(argv or sys.argv[1:])}"]
    lines.append(f"machine: {machine()}")
    here = Path(__file__).resolve().parent.parent
    trees = {"this tree": here}
    if args.baseline_tree is not None:
        trees["baseline"] = args.baseline_tree.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        out = build(Path(scratch), args.units, args.images, args.image_size)
        counts = np.load(out / "counts.npz")
        distinct = len(np.unique(counts["top_indices"]))
        lines.append(
            f"workload: {args.units} units, k={TOP} top images each ({distinct} distinct) of "
            f"{args.images} images {args.image_size}x{args.image_size}, 7x7 maps"
        )
        seconds = {name: [] for name in trees}
        sizes = {}
        for _ in range(args.repeats):
            for name, tree in trees.items():
                seconds[name].append(time_once(out, Path(scratch) / "images.npy", tree))
                sizes[name] = report_size(out)
    lines.append("")
    for name in trees:
        files, size = sizes[name]
        lines.append(
            f"{name} ({trees[name]}): write_layer_report {spread(seconds[name])} s; "
            f"{files} files, {size / 1e6:.1f} MB"
        )
    if len(trees) == 2:
        ratios = [b / o for o, b in zip(seconds["this tree"], seconds["baseline"], strict=True)]
        lines.append(f"baseline / this tree, per interleaved pair: {spread(ratios)}x")
    text = "\n".join(lines)
    print(text)
    if args.result is not None:
        args.result.write_text(text + "\n")


if __name__ == "__main__":
    main()
