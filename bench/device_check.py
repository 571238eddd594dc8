"""What one accelerator does with the current code, in one short run (issue 23).

    python -m bench.device_check --out bench/results/<device>-<date>.txt [--smoke]

Each part runs as its own process with a time limit, so one failure does not hide the
others; the file lists every part's figures or its failure, the device, the commit and the
command. Parts:

(a) the xla and cpu kernels' tally.csv on the same probe and features (identical where
    upsampling is exact; otherwise the number of differing counts);
(b) ``dissect --model zoo:resnet18 --layer layer4`` as a whole CLI process on a probe of
    224 px images, compilation included, then again with JAX's persistent compilation
    cache warm;
(c) the formula search on 10,000 images x 512 units (``bench.formulas``);
(d) ``dissect --model zoo:vit_b_16 --layer block11.mlp`` as a whole CLI process;
(e) many checkpoints in one pass: 11 ResNet-18s against one (``jaxdissect.many``).

``--smoke`` runs every part at toy sizes on the CPU in about a minute: the test suite runs it,
so the check cannot rot before an accelerator is lent. Budget on one GPU: 8 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Sizes per part: (full, smoke).
SIZES = {
    "probe_images": (1500, 16),
    "probe_size": (224, 64),
    "formula_images": (10_000, 60),
    "formula_units": (512, 6),
    "cnn": ("resnet18", "resnet20-cifar10"),
    "cnn_layer": ("layer4", "layer3"),
    "vit": ("vit_b_16", "vit_s_16"),
    "vit_layer": ("block11.mlp", "block0.mlp"),
    "many_model": ("resnet18", "resnet20-cifar10"),
    "many_layer": ("layer4", "layer3"),
    "many_count": (11, 3),
    "limit_s": (150, 120),
}


def _python(code_or_module: list[str], env: dict, limit: int) -> tuple[float, str]:
    """Runs ``python ARGS`` from the repository root; (seconds, its output)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *code_or_module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=limit,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {done.returncode}: {' | '.join(tail)}")
    return seconds, done.stdout


def _probe(work: Path, images: int, size: int) -> Path:
    from jaxdissect.data.synthetic import world

    probe = work / f"probe-{images}-{size}"
    if not (probe / "index.csv").is_file():
        world.write_probe(probe, images, 1, world.WorldConfig(image_size=size), False)
    return probe


def part_kernels(work: Path, pick, env: dict) -> list[str]:
    import numpy as np

    probe = _probe(work, pick("probe_images"), 64)
    rng = np.random.default_rng(0)
    features = np.maximum(rng.normal(size=(pick("probe_images"), 8, 8, 64)), 0)
    np.save(work / "features.npy", features.astype(np.float32))
    counts = {}
    for kernel in ("xla", "cpu"):
        out = work / f"kernel-{kernel}"
        args = ["-m", "jaxdissect", "dissect", "--dataset", str(probe), "--features"]
        args += [str(work / "features.npy"), "--out", str(out), "--kernel", kernel]
        _python([*args, "--no-report", "--no-progress"], env, pick("limit_s"))
        counts[kernel] = (out / "tally.csv").read_bytes(), np.load(out / "counts.npz")
    if counts["xla"][0] == counts["cpu"][0]:
        return ["(a) kernels: xla and cpu tally.csv byte-identical"]
    differing = sum(
        int((counts["xla"][1][n] != counts["cpu"][1][n]).sum())
        for n in ("label_area", "intersection", "unit_area")
    )
    return [f"(a) kernels: tally.csv differs; {differing} differing counts (G, I, A)"]


def _dissect_model(probe, model, layer, out, env, limit) -> float:
    args = ["-m", "jaxdissect", "dissect", "--dataset", str(probe), "--model", model]
    args += ["--layer", layer, "--out", str(out), "--no-progress", "--kernel", "xla"]
    return _python(args, env, limit)[0]


def part_resnet18(work: Path, pick, env: dict) -> list[str]:
    probe = _probe(work, pick("probe_images"), pick("probe_size"))
    cache = dict(env, JAX_COMPILATION_CACHE_DIR=str(work / "jax-cache"))
    model, layer = f"zoo:{pick('cnn')}", pick("cnn_layer")
    cold = _dissect_model(probe, model, layer, work / "cnn-cold", cache, 300)
    warm = _dissect_model(probe, model, layer, work / "cnn-warm", cache, 300)
    return [
        f"(b) {model} {layer}, {pick('probe_images')} images at {pick('probe_size')} px, whole "
        f"CLI process with the report: {cold:.1f} s compiling, {warm:.1f} s with the "
        "persistent compilation cache warm"
    ]


def part_formulas(work: Path, pick, env: dict) -> list[str]:
    args = ["-m", "bench.formulas", "--images", str(pick("formula_images")), "--units"]
    args += [str(pick("formula_units")), "--kernel", "xla", "--workdir", str(work / "formulas")]
    seconds, output = _python(args, env, 300)
    wanted = [line for line in output.splitlines() if line.startswith(("whole explain", "problem"))]
    return [f"(c) formulas ({seconds:.1f} s as a process): " + "; ".join(wanted)]


def part_vit(work: Path, pick, env: dict) -> list[str]:
    probe = _probe(work, pick("probe_images"), pick("probe_size"))
    model, layer = f"zoo:{pick('vit')}", pick("vit_layer")
    seconds = _dissect_model(probe, model, layer, work / "vit", env, 300)
    return [f"(d) {model} {layer}, whole CLI process with the report: {seconds:.1f} s"]


_MANY = """
import json, sys, time
from jaxdissect.models import zoo
from jaxdissect.config import DissectConfig
from jaxdissect.many import dissect_many
probe, model, layer, count, out = sys.argv[1:6]
config = DissectConfig(kernel="xla")
models = [zoo.feature_model(model, None) for _ in range(int(count))]
times = {}
for k in (1, int(count)):
    start = time.perf_counter()
    dissect_many(probe, models[:k], config, f"{out}/{k}", layers=[layer],
                 names=[f"s{i}" for i in range(k)], report=False, progress=False)
    times[k] = time.perf_counter() - start
print(json.dumps(times))
"""


def part_many(work: Path, pick, env: dict) -> list[str]:
    probe = _probe(work, pick("probe_images"), pick("probe_size"))
    count = pick("many_count")
    args = ["-c", _MANY, str(probe), pick("many_model"), pick("many_layer"), str(count)]
    _, output = _python([*args, str(work / "many")], env, 300)
    times = json.loads(output.strip().splitlines()[-1])
    one, many = times["1"], times[str(count)]
    return [
        f"(e) {count} {pick('many_model')} checkpoints in one pass: {many:.1f} s against "
        f"{one:.1f} s for one ({many / one:.2f}x; target at most 3x on one GPU)"
    ]


PARTS = (part_kernels, part_resnet18, part_formulas, part_vit, part_many)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the result file to write")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, on the CPU, ~1 min")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    import jax

    pick = lambda name: SIZES[name][1 if args.smoke else 0]  # noqa: E731
    env = dict(os.environ)
    if args.smoke:
        env["JAX_PLATFORMS"] = "cpu"
    device = jax.devices()[0] if not args.smoke else jax.devices("cpu")[0]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"# python -m bench.device_check {' '.join(sys.argv[1:] if argv is None else argv)}",
        f"# {time.strftime('%Y-%m-%d %H:%M')}; commit {commit or 'unknown'}; device "
        f"{device.device_kind} ({jax.default_backend() if not args.smoke else 'cpu'}, "
        f"{jax.device_count()} device(s)); jax {jax.__version__}; {os.cpu_count()} CPUs, "
        f"{platform.machine()}",
    ]
    failures = 0
    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        for part in PARTS:
            start = time.perf_counter()
            try:
                lines += part(work, pick, env)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
                failures += 1
                lines.append(
                    f"{part.__name__}: FAILED after {time.perf_counter() - start:.0f} s: {error}"
                )
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
