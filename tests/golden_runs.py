"""Inputs of the golden dissections (tests/test_golden.py): the fixture probe and a small
synthetic-world probe, each with dyadic activations, dissected by the CLI under both union
rules and both kernels.

The files in tests/fixtures/golden/ were written by the CLI at commit 3221c02, before the
pipeline was restructured (issue 14); the counts in them are checked against the NumPy
reference loop by tests/stats/test_tally.py. Regenerate them only for a deliberate change of
output, and say why in the commit: ``python tests/golden_runs.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from probe_fixture import dyadic_features, make_probe

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
RUNS = [(union, kernel) for union in ("paper", "lite") for kernel in ("cpu", "xla")]


def make_inputs(root: Path) -> dict[str, tuple[Path, Path]]:
    """{name: (dataset folder, features .npy)}."""
    from jaxdissect.data.synthetic import world

    inputs = {}
    fixture = make_probe(root / "fixture")
    np.save(root / "fixture.npy", dyadic_features(12, (4, 4, 6)))
    inputs["fixture"] = (fixture.directory, root / "fixture.npy")
    world.write_probe(root / "synthetic", 24, 0, world.WorldConfig(image_size=32), False)
    np.save(root / "synthetic.npy", dyadic_features(24, (4, 4, 8), seed=3))
    inputs["synthetic"] = (root / "synthetic", root / "synthetic.npy")
    return inputs


def dissect_args(dataset: Path, features: Path, out: Path, union: str, kernel: str) -> list:
    return [
        "dissect",
        "--dataset", str(dataset),
        "--features", str(features),
        "--out", str(out),
        "--union", union,
        "--kernel", kernel,
        "--quantile", "0.05",
        "--no-report",
        "--no-progress",
    ]  # fmt: skip


def normalised_results(path: Path) -> dict:
    """results.json without the fields that name this run's folders, or its probe's files
    (whose JPEG sizes follow Pillow's encoder)."""
    results = json.loads(path.read_text())
    for key in ("dataset", "features", "probe_identity"):
        results.pop(key, None)
    return results


def main() -> None:
    import tempfile

    from jaxdissect.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (dataset, features) in make_inputs(root).items():
            for union, kernel in RUNS:
                out = root / f"{name}-{union}-{kernel}"
                assert cli(dissect_args(dataset, features, out, union, kernel)) == 0
                target = GOLDEN / f"{name}-{union}-{kernel}"
                target.mkdir(parents=True, exist_ok=True)
                (target / "tally.csv").write_bytes((out / "tally.csv").read_bytes())
                results = normalised_results(out / "results.json")
                (target / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
