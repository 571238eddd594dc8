"""Start-up with a model: a whole ``dissect --model`` process against ``dissect --features``.

    python -m bench.startup [--images 300] [--weights FILE] [--repeats 3]
        [--large resnet50,vit_b_16] [--result PATH]

Part 1 (issue 23's target: at most 3x): a probe of the synthetic world (``--images`` at 32
px), the real ResNet-20's layer3 activations saved by ``features``, then, as whole CLI
processes with warm data and compilation caches, ``dissect --model zoo:resnet20-cifar10
--weights W --layer layer3`` and ``dissect --features F.npy`` on the same probe; tally.csv
compared byte for byte. Part 2: each ``--large`` zoo model's whole ``features`` process on 8
images at 224 px with random weights, first with an empty compilation cache, then warm.
Needs a weights file where ../shared is absent.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED_WEIGHTS = ROOT.parent / "shared" / "models" / "resnet20-12fca82f.th"


def _timed(command: list[str], env: dict[str, str]) -> float:
    """Seconds of one ``python -m jaxdissect COMMAND`` process."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "jaxdissect", *command], check=True, capture_output=True, env=env
    )
    return time.perf_counter() - start


def _resnet20(args, work: Path, env: dict[str, str]) -> list[str]:
    """Part 1's lines: the two whole processes' times and their ratio."""
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array
    from jaxdissect.data.synthetic import world

    probe = work / f"probe-{args.images}"
    if not (probe / "index.csv").is_file():
        world.write_probe(probe, args.images, 1, world.WorldConfig(image_size=32), False)
    images = work / "images.npy"
    np.save(images, load_image_array(open_broden(probe), work / "cache", progress=False))
    features = work / "layer3.npy"
    model = ["--model", "zoo:resnet20-cifar10", "--weights", str(args.weights)]
    save = ["features", *model, "--layer", "layer3", "--images", str(images)]
    _timed([*save, "--out", str(features)], env)
    common = ["dissect", "--dataset", str(probe), "--no-progress", "--no-report"]
    runs = {
        "--model": [*common, *model, "--layer", "layer3"],
        "--features": [*common, "--features", str(features)],
    }
    times = {}
    for name, command in runs.items():
        out = work / name.strip("-")
        shutil.rmtree(out, ignore_errors=True)
        _timed([*command, "--out", str(out)], env)  # caches filled
        times[name] = []
        for _ in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            times[name].append(_timed([*command, "--out", str(out)], env))
    same = (work / "model" / "tally.csv").read_bytes() == (
        work / "features" / "tally.csv"
    ).read_bytes()
    model_s, features_s = (statistics.median(times[k]) for k in runs)
    return [
        f"# ResNet-20 layer3, {args.images} images, real weights, warm caches, median of "
        f"{args.repeats}",
        "process                 seconds (each run)",
        *(f"{k:<23} {' '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()),
        f"--model / --features: {model_s / features_s:.2f} (target: at most 3)",
        f"tally.csv byte-identical: {'yes' if same else 'NO'}",
    ]


def _large(args, work: Path, env: dict[str, str]) -> list[str]:
    """Part 2's lines: each large model's features process, cold and warm compile cache."""
    images = work / "images224.npy"
    rng = np.random.default_rng(0)
    np.save(images, rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8))
    lines = [
        "# features --model zoo:M (random weights), 8 images at 224 px",
        "model  layer  empty cache (s)  warm cache (s)",
    ]
    layers = {"resnet50": "layer4", "vit_b_16": "block11"}
    for name in args.large:
        xla = work / f"xla-{name}"
        shutil.rmtree(xla, ignore_errors=True)
        run_env = {**env, "JAX_COMPILATION_CACHE_DIR": str(xla)}
        command = ["features", "--model", f"zoo:{name}", "--layer", layers.get(name, "logits")]
        command += ["--images", str(images), "--out", str(work / f"{name}.npy")]
        cold = _timed(command, run_env)
        warm = _timed(command, run_env)
        lines.append(f"{name}  {layers.get(name, 'logits')}  {cold:.1f}  {warm:.1f}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--weights", type=Path, default=SHARED_WEIGHTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--large", type=lambda s: [x for x in s.split(",") if x], default=["resnet50", "vit_b_16"]
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "startup")
    parser.add_argument("--result", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        where = "" if SHARED_WEIGHTS.parent.is_dir() else f" ({SHARED_WEIGHTS.parent} is absent)"
        print(f"{args.weights}: not found{where}; give --weights FILE (ResNet-20)", file=sys.stderr)
        return 2
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JAXDISSECT_CACHE": str(work / "cache")}
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(work / "xla"))
    lines = [
        f"# python -m bench.startup --images {args.images} --repeats {args.repeats} "
        f"--large {','.join(args.large)}",
        *_resnet20(args, work, env),
        *(_large(args, work, env) if args.large else []),
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average at the end {os.getloadavg()[0]:.1f}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.result:
        args.result.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
