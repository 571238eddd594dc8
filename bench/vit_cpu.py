"""A ViT's MLP units against a CNN's top layer, each dissected by a whole CLI process, on CPU.

    python -m bench.vit_cpu [--images 2000] [--workdir /tmp/vit_cpu]

Writes the synthetic world's probe set (``--images`` images of 64x64, labels 32x32; once)
and decodes it into a cache of its own; then times, one after the other, two whole
``python -m jaxdissect dissect`` processes on it (start-up, compilation, both passes,
scores, files and the HTML report): a randomly initialised ViT-S/16-shaped network cut
into 8 px patches (12 blocks, 384 channels, 6 heads, MLPs of 1,536; ``block6.mlp``: 1,536
units on an 8x8 map) and torchvision's ResNet-18 with random weights (``layer4``: 512 units
on a 2x2 map). Prints both times and their ratio; the target is the ViT within 3x.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jaxdissect.models.features import FeatureModel, Preprocess

SIZE, PATCH = 64, 8
REPO = Path(__file__).resolve().parents[1]


def vit_s_patch8(weights) -> FeatureModel:
    """``--model bench.vit_cpu:vit_s_patch8``: ViT-S/16's shape at 64 px in 8 px patches."""
    from flax import nnx

    from jaxdissect.models.vit import VisionTransformer
    from jaxdissect.models.zoo import as_feature_model

    if weights is not None:
        raise SystemExit("vit_s_patch8 is randomly initialised; it takes no --weights")
    model = VisionTransformer(SIZE, PATCH, 12, 384, 6, 1536, rngs=nnx.Rngs(0))
    model.eval()
    return as_feature_model(model, Preprocess(size=(SIZE, SIZE)), "vit_s_patch8")


def _dissect(probe: Path, model: str, layer: str, out: Path, cache: Path) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one whole ``python -m jaxdissect dissect`` process; on a
    shared machine the CPU seconds are the steadier figure."""
    shutil.rmtree(out, ignore_errors=True)  # a finished OUT would be reused, not redone
    command = [sys.executable, "-m", "jaxdissect", "dissect", "--dataset", str(probe)]
    command += ["--model", model, "--layer", layer, "--out", str(out), "--cache", str(cache)]
    command += ["--no-progress", "--batch-size", "100"]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vit_cpu"))
    args = parser.parse_args(argv)
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array, load_label_arrays
    from jaxdissect.data.synthetic.world import WorldConfig, write_probe

    probe, cache = args.workdir / f"probe{args.images}", args.workdir / "cache"
    if not (probe / "index.csv").is_file():
        write_probe(probe, args.images, 0, WorldConfig(image_size=SIZE), progress=False)
    dataset = open_broden(probe)
    load_label_arrays(dataset, cache, progress=False)  # decoded once, outside the timings
    load_image_array(dataset, cache, progress=False)
    vit = _dissect(probe, "bench.vit_cpu:vit_s_patch8", "block6.mlp", args.workdir / "vit", cache)
    resnet = _dissect(probe, "zoo:resnet18", "layer4", args.workdir / "resnet18", cache)
    print(f"machine: {os.cpu_count()} CPU cores; probe: {args.images} images of {SIZE}x{SIZE}")
    print(
        f"ViT-S shape, patch 8, block6.mlp (1536 units, 8x8): {vit[0]:.1f} s ({vit[1]:.1f} s CPU)"
    )
    print(f"ResNet-18 layer4 (512 units, 2x2): {resnet[0]:.1f} s ({resnet[1]:.1f} s CPU)")
    print(
        f"ratio: {vit[0] / resnet[0]:.2f}x wall-clock, {vit[1] / resnet[1]:.2f}x CPU time "
        "(target: at most 3x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
