"""What a user waits: ``python -m jaxdissect dissect`` as a process, against a Lite-style loop.

    python -m bench.whole_process [--images 1500] [--image-size 224] [--repeats 2]

Builds, once, a Broden-format probe set of Broden's shape (224x224 images, 112x112 label
planes, four pixel planes, image-level scene and texture labels; ``bench.workload``'s
statistics, written by ``write_broden``) and 7x7x512 features (``relu_features``), in
build/whole_process/. Then, in this one run, times the CLI as a separate process:

- cold: a first run after a fresh clone and ``make setup``: an empty decoded-data cache,
  and a Numba cache filled by ``python -m jaxdissect.precompile`` alone, with the report;
- warm, with and without the report (``--repeats`` times each);

and, after each repeat's CLI runs, the Lite-style loop (``numpy.quantile`` thresholds, then
``bench.lite_loop``'s per-image, per-active-unit upsampling and ``bincount``) on the same
features and labels (ratios are taken per repeat, so that a change of load hits both), asserting
that the thresholds and counts (G, I, A) are identical to the CLI's. Each CLI run's stages
come from the timestamps it prints under ``JAXDISSECT_TIMINGS=1`` (``jaxdissect.timings``).
Prints a table and writes it, with the machine and the command, to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.lite_loop import lite_tally
from bench.workload import CATEGORY_SIZES, PLANES, broden_like, label_ranges, relu_features

IMAGE_SIZE = 224
LABEL_SIZE = 112
QUANTILE = 0.005  # the CLI's default
BATCH = 32  # the CLI's default --batch-size


def build(folder: Path, num_images: int, image_size: int = IMAGE_SIZE) -> None:
    """Writes folder/broden (a Broden-format set) and folder/features.npy, unless present."""
    from jaxdissect.data.broden_writer import ProbeImage, write_broden

    done = folder / f"built-{num_images}{'' if image_size == IMAGE_SIZE else f'-{image_size}px'}"
    if done.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    labels = broden_like(num_images, 0, LABEL_SIZE)
    rng = np.random.default_rng(2)

    def images():
        for i in range(num_images):
            # Smooth blocks, not noise: JPEG files of a photograph's size.
            coarse = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
            block = -(-image_size // 28)
            pixels = np.repeat(np.repeat(coarse, block, 0), block, 1)[:image_size, :image_size]
            slots = labels.slot_labels[i]
            planes = {
                category: [slots[labels.slot_planes[i, p]]]
                for p, (category, *_) in enumerate(PLANES)
            }
            scene, texture = (int(x) for x in labels.image_labels[i])
            yield ProbeImage(
                f"bench/{i:06d}",
                pixels,
                planes,
                {"scene": [scene] if scene else [], "texture": [texture] if texture else []},
            )

    ranges = label_ranges()
    names = ["-"] + [f"{c}-{n}" for c, numbers in ranges.items() for n in numbers]
    write_broden(
        folder / "broden",
        list(CATEGORY_SIZES),
        names,
        {c: list(map(int, numbers)) for c, numbers in ranges.items()},
        images(),
        progress=True,
    )
    np.save(folder / "features.npy", relu_features(num_images))
    done.touch()


def run_cli(
    folder: Path, cache: Path, numba_cache: Path, report: bool, tree: Path | None = None
) -> dict[str, float]:
    """Runs the CLI once (of the source tree ``tree``, default this one); {stage: seconds}
    from its timestamps, and "total"."""
    folder, cache = folder.resolve(), cache.resolve()
    out = folder / "out"
    shutil.rmtree(out, ignore_errors=True)  # else the finished run would be reused
    command = [
        sys.executable, "-m", "jaxdissect", "dissect", "--dataset", str(folder / "broden"),
        "--features", str(folder / "features.npy"), "--out", str(out), "--cache", str(cache),
        "--union", "lite", "--no-progress",
    ]  # fmt: skip
    if not report:
        command.append("--no-report")
    env = {**os.environ, "JAXDISSECT_TIMINGS": "1", "NUMBA_CACHE_DIR": str(numba_cache)}
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"the CLI failed ({done.returncode}):\n{done.stderr}")
    stages, last = {}, start
    for line in done.stderr.splitlines():
        if line.startswith("jaxdissect-timing "):
            stage, stamp = line.split()[1:-1], float(line.split()[-1])
            stages[" ".join(stage)] = stamp - last
            last = stamp
    stages["exit"] = end - last
    stages["total"] = end - start
    return stages


def lite_run(folder: Path) -> tuple[dict[str, np.ndarray], float]:
    """The Lite-style loop on the built set: (thresholds and counts, seconds)."""
    from jaxdissect.data.broden import open_broden

    dataset = open_broden(folder / "broden")
    n = dataset.num_images
    labels = broden_like(n, 0, LABEL_SIZE)  # the planes that were written, in memory
    start = time.perf_counter()
    features = np.load(folder / "features.npy")
    units = features.shape[-1]
    thresholds = np.quantile(features.reshape(-1, units), 1 - QUANTILE, axis=0).astype(np.float32)
    G, I, A = lite_tally(
        features,
        thresholds,
        labels.label_planes(0, n),
        labels.image_labels,
        dataset.label_category,
        len(dataset.categories),
    )
    seconds = time.perf_counter() - start
    counts = {"thresholds": thresholds, "label_area": G, "intersection": I, "unit_area": A}
    return counts, seconds


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jax
    import numba

    return (
        f"{os.cpu_count()} CPU cores ({model or platform.processor()}), {platform.system()}, "
        f"Python {platform.python_version()}, NumPy {np.__version__}, JAX {jax.__version__}, "
        f"Numba {numba.__version__}; load average {os.getloadavg()[0]:.1f} at the start"
    )


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="probe images' side")
    parser.add_argument("--repeats", type=int, default=2, help="warm runs of each kind")
    parser.add_argument("--folder", type=Path, default=Path("build/whole_process"))
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="another source tree of jaxdissect (e.g. `git archive` of an earlier commit): "
        "its warm CLI is timed too, interleaved with ours",
    )
    parser.add_argument(
        "--result", type=Path, help="default bench/results/cpu-<cores>core-whole-process.txt"
    )
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    lines = [f"command: python -m bench.whole_process {' '.join(argv or sys.argv[1:])}"]
    lines.append(f"machine: {machine()}")

    build(args.folder, args.images, args.image_size)
    lines.append(
        f"workload: {args.images} images {args.image_size}x{args.image_size}, {LABEL_SIZE}x"
        f"{LABEL_SIZE} labels in {len(PLANES)} pixel planes, 7x7x512 float32 features (.npy), "
        "union rule lite"
    )
    runs, lite_seconds = _timed_runs(args, lines)
    lines.append("thresholds and counts (G, I, A) identical to the Lite-style loop's")
    lines += _summary(args, runs, lite_seconds)
    text = "\n".join(lines)
    print(text)
    result = args.result or Path(f"bench/results/cpu-{os.cpu_count()}core-whole-process.txt")
    result.write_text(text + "\n")


def _timed_runs(args, lines: list[str]):
    """The CLI's runs (cold, then warm ones interleaved with the baseline tree's), each
    repeat followed by the Lite-style loop, whose counts must equal the CLI's. Returns
    ({kind: [stage seconds of each run]}, [the loop's seconds per repeat])."""
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        cold_cache, cold_numba = Path(scratch, "cache"), Path(scratch, "numba")
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cold_numba)}
        start = time.time()
        subprocess.run([sys.executable, "-m", "jaxdissect.precompile"], env=env, check=True)
        lines.append(
            f"make setup's precompile (python -m jaxdissect.precompile): "
            f"{time.time() - start:.1f} s"
        )
        runs["cold, report"] = [run_cli(args.folder, cold_cache, cold_numba, True)]
        warm_cache = args.folder / "cache"
        warm_numba = Path(os.environ.get("NUMBA_CACHE_DIR", cold_numba))
        run_cli(args.folder, warm_cache, warm_numba, False)  # fills the warm caches
        trees = {"": None}
        if args.baseline_tree is not None:
            trees["baseline, "] = args.baseline_tree.resolve()
            for report in (True, False):  # fills its Numba cache
                run_cli(args.folder, warm_cache, warm_numba, report, trees["baseline, "])
        lite_seconds = []
        for _ in range(args.repeats):  # interleaved, so that load changes hit every kind
            for prefix, tree in trees.items():
                for report in (True, False):
                    kind = prefix + ("warm, report" if report else "warm, no report")
                    runs.setdefault(kind, []).append(
                        run_cli(args.folder, warm_cache, warm_numba, report, tree)
                    )
            ours = np.load(args.folder / "out" / "counts.npz")  # the last run's (no report)
            lite, seconds = lite_run(args.folder)
            lite_seconds.append(seconds)
            for key, value in lite.items():
                np.testing.assert_array_equal(ours[key], value, err_msg=key)
    return runs, lite_seconds


def _summary(args, runs: dict, lite_seconds: list[float]) -> list[str]:
    """The table of stages and the ratios, as lines."""
    n = args.images
    stages = [s for s in runs["warm, report"][0] if s != "total"]
    lines = ["", "seconds (median (min-max) of the runs) | " + " | ".join(runs)]
    for stage in [*stages, "total"]:
        cells = [
            spread([r[stage] for r in kind]) if stage in kind[0] else "-" for kind in runs.values()
        ]
        lines.append(f"{stage} | " + " | ".join(cells))
    lines.append(
        f"Lite-style loop (numpy.quantile thresholds + tally, in one process, no files), run "
        f"after the CLI runs of each repeat: {spread(lite_seconds)} s"
    )
    for kind in ("warm, report", "warm, no report"):
        totals = [r["total"] for r in runs[kind]]
        ratios = [lite / total for lite, total in zip(lite_seconds, totals, strict=True)]
        lines.append(
            f"Lite-style loop / whole CLI process, {kind}, per repeat: {spread(ratios)}x; "
            f"CLI {n / np.median(totals):,.0f} images/s"
        )
    warm = runs["warm, report"]
    to_first = [r["startup"] + r["label cache"] + r["thresholds first batch"] for r in warm]
    lines.append(f"warm, report: process start to the first batch folded: {spread(to_first)} s")
    # The first batch also pays the kernels' one-time loading: the rate after it is the pass's.
    rest = [(n - BATCH) / r["pass 1"] for r in warm]
    whole = [n / (r["thresholds first batch"] + r["pass 1"]) for r in warm]
    lines.append(
        f"warm, report: pass 1 images/s, after its first batch {spread(rest)}; "
        f"with it {spread(whole)}"
    )
    if args.baseline_tree is not None:
        for kind in ("warm, report", "warm, no report"):
            ratio = [
                b["total"] / o["total"]
                for b, o in zip(runs["baseline, " + kind], runs[kind], strict=True)
            ]
            lines.append(f"baseline / ours, {kind}, per interleaved pair: {spread(ratio)}")
    return lines


if __name__ == "__main__":
    main()
