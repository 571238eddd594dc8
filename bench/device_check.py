"""What one accelerator does with the current code, in one short run (issue 23).

    python -m bench.device_check --out bench/results/<device>-<date>.txt [--smoke]

Each part runs as its own process, so one failure does not hide the others; the parent
never imports JAX (a JAX backend in the parent would take 75% of a GPU's memory before the
parts run). The whole check has one deadline (``--deadline-s``): each part gets what is left,
and one that runs out is recorded as timed out. The file, rewritten after every part (a
killed check keeps what finished), lists every part's figures or its failure, the device,
the commit and the command. Parts:

(a) the xla and cpu kernels' tally.csv on the same probe and features (identical where
    upsampling is exact; otherwise the number of differing counts);
(b) ``dissect --model zoo:resnet18 --layer layer4`` as a whole CLI process on a probe of
    224 px images, compilation included, then again with JAX's persistent compilation
    cache warm;
(c) the formula search on 10,000 images x 512 units (``bench.formulas``);
(d) ``dissect --model zoo:vit_b_16 --layer block11.mlp`` as a whole CLI process;
(e) many checkpoints in one pass: 11 ResNet-18s (seeds 0-10) against one
    (``jaxdissect.many``), each compiled in an untimed run first; the last checkpoint's
    tally.csv compared byte for byte with its own single run's, naming the forward mode
    (vmap on accelerators, whose bits are not otherwise verified).

``--smoke`` runs every part at toy sizes on the CPU in about a minute: the test suite runs it,
so the check cannot rot before an accelerator is lent. Budget on one GPU: 8 minutes; the
default deadline, 7.5 minutes, keeps within it.
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
}


DEADLINE_S = 450


def _python(code_or_module: list[str], env: dict, deadline: float) -> tuple[float, str]:
    """Runs ``python ARGS`` from the repository root, stopped at ``deadline`` (a
    ``time.monotonic()`` value); (seconds, its output)."""
    left = deadline - time.monotonic()
    if left < 1:
        raise subprocess.TimeoutExpired(code_or_module[:2], 0)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *code_or_module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=left,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {done.returncode}: {' | '.join(tail)}")
    return seconds, done.stdout


_PROBE = """
import sys
from pathlib import Path
from jaxdissect.data.synthetic import world
out, images, size = sys.argv[1:4]
world.write_probe(Path(out), int(images), 1, world.WorldConfig(image_size=int(size)), False)
"""


def _probe(work: Path, images: int, size: int, env: dict, deadline: float) -> Path:
    """The synthetic probe, written by a child process (the parent stays without JAX)."""
    probe = work / f"probe-{images}-{size}"
    if not (probe / "index.csv").is_file():
        _python(["-c", _PROBE, str(probe), str(images), str(size)], env, deadline)
    return probe


def _differing_counts(a: Path, b: Path) -> int:
    """How many of the (G, I, A) counts in two counts.npz files differ."""
    import numpy as np

    with np.load(a) as first, np.load(b) as second:
        return sum(
            int((first[n] != second[n]).sum()) for n in ("label_area", "intersection", "unit_area")
        )


def part_kernels(work: Path, pick, env: dict, deadline: float) -> list[str]:
    import numpy as np

    probe = _probe(work, pick("probe_images"), 64, env, deadline)
    rng = np.random.default_rng(0)
    features = np.maximum(rng.normal(size=(pick("probe_images"), 8, 8, 64)), 0)
    np.save(work / "features.npy", features.astype(np.float32))
    for kernel in ("xla", "cpu"):
        out = work / f"kernel-{kernel}"
        args = ["-m", "jaxdissect", "dissect", "--dataset", str(probe), "--features"]
        args += [str(work / "features.npy"), "--out", str(out), "--kernel", kernel]
        _python([*args, "--no-report", "--no-progress"], env, deadline)
    xla, cpu = work / "kernel-xla", work / "kernel-cpu"
    if (xla / "tally.csv").read_bytes() == (cpu / "tally.csv").read_bytes():
        return ["(a) kernels: xla and cpu tally.csv byte-identical"]
    differing = _differing_counts(xla / "counts.npz", cpu / "counts.npz")
    return [f"(a) kernels: tally.csv differs; {differing} differing counts (G, I, A)"]


def _dissect_model(probe, model, layer, out, env, deadline) -> float:
    args = ["-m", "jaxdissect", "dissect", "--dataset", str(probe), "--model", model]
    args += ["--layer", layer, "--out", str(out), "--no-progress", "--kernel", "xla"]
    return _python(args, env, deadline)[0]


def part_resnet18(work: Path, pick, env: dict, deadline: float) -> list[str]:
    probe = _probe(work, pick("probe_images"), pick("probe_size"), env, deadline)
    cache = dict(env, JAX_COMPILATION_CACHE_DIR=str(work / "jax-cache"))
    model, layer = f"zoo:{pick('cnn')}", pick("cnn_layer")
    cold = _dissect_model(probe, model, layer, work / "cnn-cold", cache, deadline)
    warm = _dissect_model(probe, model, layer, work / "cnn-warm", cache, deadline)
    return [
        f"(b) {model} {layer}, {pick('probe_images')} images at {pick('probe_size')} px, whole "
        f"CLI process with the report: {cold:.1f} s compiling, {warm:.1f} s with the "
        "persistent compilation cache warm"
    ]


def part_formulas(work: Path, pick, env: dict, deadline: float) -> list[str]:
    args = ["-m", "bench.formulas", "--images", str(pick("formula_images")), "--units"]
    args += [str(pick("formula_units")), "--kernel", "xla", "--workdir", str(work / "formulas")]
    seconds, output = _python(args, env, deadline)
    wanted = [line for line in output.splitlines() if line.startswith(("whole explain", "problem"))]
    return [f"(c) formulas ({seconds:.1f} s as a process): " + "; ".join(wanted)]


def part_vit(work: Path, pick, env: dict, deadline: float) -> list[str]:
    probe = _probe(work, pick("probe_images"), pick("probe_size"), env, deadline)
    model, layer = f"zoo:{pick('vit')}", pick("vit_layer")
    seconds = _dissect_model(probe, model, layer, work / "vit", env, deadline)
    return [f"(d) {model} {layer}, whole CLI process with the report: {seconds:.1f} s"]


_MANY = """
import json, sys, time
from jaxdissect.models import zoo
from jaxdissect.config import DissectConfig
from jaxdissect.many import dissect_many, forward_mode
from jaxdissect.pipeline import dissect
probe, model, layer, count, out = sys.argv[1:6]
count = int(count)
config = DissectConfig(kernel="xla")
models = [zoo.feature_model(model, None, seed=seed) for seed in range(count)]
times = {}
for k in (1, count):
    for run in ("compile", "timed"):  # the first run compiles; the timed one reuses it all
        start = time.perf_counter()
        dissect_many(probe, models[:k], config, f"{out}/{run}-{k}", layers=[layer],
                     names=[f"s{i}" for i in range(k)], report=False, progress=False)
        times[k] = time.perf_counter() - start
dissect(probe, models[-1], config, f"{out}/single", layers=[layer], report=False,
        progress=False)
print(json.dumps({"times": times, "mode": forward_mode()}))
"""


def part_many(work: Path, pick, env: dict, deadline: float) -> list[str]:
    probe = _probe(work, pick("probe_images"), pick("probe_size"), env, deadline)
    count, many_dir = pick("many_count"), work / "many"
    args = ["-c", _MANY, str(probe), pick("many_model"), pick("many_layer"), str(count)]
    _, output = _python([*args, str(many_dir)], env, deadline)
    found = json.loads(output.strip().splitlines()[-1])
    one, many = found["times"]["1"], found["times"][str(count)]
    last = many_dir / f"timed-{count}" / f"s{count - 1}"
    single = many_dir / "single"
    if (last / "tally.csv").read_bytes() == (single / "tally.csv").read_bytes():
        same = "byte-identical to"
    else:
        differing = _differing_counts(last / "counts.npz", single / "counts.npz")
        same = f"DIFFERS ({differing} differing counts) from"
    return [
        f"(e) {count} {pick('many_model')} checkpoints in one pass ({found['mode']}), compiled "
        f"beforehand: {many:.1f} s against {one:.1f} s for one ({many / one:.2f}x; target at "
        f"most 3x on one GPU); checkpoint s{count - 1}'s tally.csv {same} its own run's"
    ]


PARTS = (part_kernels, part_resnet18, part_formulas, part_vit, part_many)

_DEVICE = """
import json, os, jax
device = jax.devices()[0]
print(json.dumps(f"{device.device_kind} ({jax.default_backend()}, {jax.device_count()} "
                 f"device(s)); jax {jax.__version__}"))
"""


def _device(env: dict, deadline: float) -> str:
    """The first device, its backend and count, and JAX's version, asked of a child process."""
    try:
        return json.loads(_python(["-c", _DEVICE], env, deadline)[1].strip().splitlines()[-1])
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, IndexError) as error:
        return f"unknown ({type(error).__name__}: {error})"


def _commit() -> str:
    """The checkout's commit, or 'unknown' (no git, or not a git checkout)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the result file to write")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, on the CPU, ~1 min")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--deadline-s", type=float, default=DEADLINE_S, help="seconds for the whole check"
    )
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.deadline_s

    pick = lambda name: SIZES[name][1 if args.smoke else 0]  # noqa: E731
    env = dict(os.environ)
    if args.smoke:
        env["JAX_PLATFORMS"] = "cpu"
    lines = [
        f"# python -m bench.device_check {' '.join(sys.argv[1:] if argv is None else argv)}",
        f"# {time.strftime('%Y-%m-%d %H:%M')}; commit {_commit()}; device "
        f"{_device(env, deadline)}; {os.cpu_count()} CPUs, {platform.machine()}",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write():
        partial = args.out.with_name(f".{args.out.name}.partial")
        partial.write_text("\n".join(lines) + "\n")
        os.replace(partial, args.out)

    write()
    failures = 0
    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        for part in PARTS:
            start = time.perf_counter()
            try:
                lines += part(work, pick, env, deadline)
            except subprocess.TimeoutExpired:
                failures += 1
                lines.append(
                    f"{part.__name__}: TIMED OUT after {time.perf_counter() - start:.0f} s "
                    f"(the check's deadline, {args.deadline_s:.0f} s, was reached)"
                )
            except (RuntimeError, OSError, ValueError, KeyError) as error:
                failures += 1
                lines.append(
                    f"{part.__name__}: FAILED after {time.perf_counter() - start:.0f} s: {error}"
                )
            print(lines[-1], flush=True)
            write()  # a check killed later keeps what finished
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
