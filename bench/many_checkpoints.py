"""K checkpoints in one ``dissect`` process against K separate processes.

    python -m bench.many_checkpoints [--checkpoints 4] [--images 300] [--model zoo:resnet20-cifar10]
        [--layer layer3] [--weights FILE] [--result PATH]

Writes K checkpoints of the model with torch (the real ResNet-20 of ../shared/models, or
``--weights``, each with its parameters scaled by a different factor, so that their tallies
differ), a probe of the synthetic world (``--images`` at 32 px), then times, as whole CLI
processes with warm caches: the K separate ``dissect --weights W_k`` commands, and the one
``dissect --weights W_1 ... --weights W_K`` command, each into a folder emptied first (a
reused output would time nothing). Asserts that every checkpoint's tally.csv is
byte-identical in both, prints the ratio and writes it, with the machine and the command,
to ``--result``. Needs torch, and a weights file where ../shared is absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_WEIGHTS = ROOT.parent / "shared" / "models" / "resnet20-12fca82f.th"


def write_checkpoints(folder: Path, count: int, source: Path) -> list[Path]:
    """K legacy-format torch checkpoints, the k-th the source's tensors times (1 + k/10)."""
    import torch

    base = torch.load(source, map_location="cpu", weights_only=False)
    paths = []
    for k in range(count):
        state = {
            name: tensor * (1 + k / 10) if tensor.is_floating_point() else tensor
            for name, tensor in base["state_dict"].items()
        }
        path = folder / f"snapshot{k}.th"
        torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=False)
        paths.append(path)
    return paths


def _dissect(args: list[str], out: Path) -> float:
    """Seconds of one ``dissect ARGS --out OUT`` process, into an emptied OUT (this bench's
    own folder under its workdir)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "jaxdissect", "dissect", *args, "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--model", default="zoo:resnet20-cifar10")
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--weights", type=Path, default=SHARED_WEIGHTS)
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "many_checkpoints")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--result", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        where = "" if SHARED_WEIGHTS.parent.is_dir() else f" ({SHARED_WEIGHTS.parent} is absent)"
        print(
            f"{args.weights}: not found{where}; give --weights FILE, a PyTorch checkpoint of "
            f"{args.model}",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("torch") is None:
        print(
            "bench.many_checkpoints writes its checkpoints with torch, which is not installed: "
            "pip install torch",
            file=sys.stderr,
        )
        return 2
    from jaxdissect.data.synthetic import world

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    probe = work / f"probe-{args.images}"
    if not (probe / "index.csv").is_file():
        world.write_probe(probe, args.images, 1, world.WorldConfig(image_size=32), False)
    paths = write_checkpoints(work, args.checkpoints, args.weights)
    common = ["--dataset", str(probe), "--model", args.model, "--layer", args.layer]
    common += ["--no-progress", "--no-report"]
    weights = [arg for path in paths for arg in ("--weights", str(path))]
    _dissect([*common, *weights], work / "warmup")  # caches filled
    rows = []
    for repeat in range(args.repeats):
        separate = sum(
            _dissect([*common, "--weights", str(p)], work / f"one-{p.stem}-{repeat}") for p in paths
        )
        together = _dissect([*common, *weights], work / f"many-{repeat}")
        for p in paths:
            one = (work / f"one-{p.stem}-{repeat}" / "tally.csv").read_bytes()
            many = (work / f"many-{repeat}" / p.stem / "tally.csv").read_bytes()
            assert one == many, f"{p.stem}: tally.csv differs"
        rows.append((separate, together))
    lines = [
        f"# python -m bench.many_checkpoints --checkpoints {args.checkpoints} --images "
        f"{args.images} --model {args.model} --layer {args.layer}",
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average at the end {os.getloadavg()[0]:.1f}",
        "repeat  K separate processes (s)  one process (s)  ratio",
        *(
            f"{i}       {sep:24.2f}  {tog:15.2f}  {tog / sep:.2f}"
            for i, (sep, tog) in enumerate(rows)
        ),
        "every checkpoint's tally.csv byte-identical in both: yes",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.result:
        args.result.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
