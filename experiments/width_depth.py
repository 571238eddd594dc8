"""Unique detectors against the width of the last conv layer and against depth.

    python -m experiments.width_depth [--config smoke|default|full] [--workdir DIR] [key=value ...]

Trains the AlexNet-style baseline with its last conv layer 0.5x, 1x, 2x and 3x as wide
(the paper widened conv5 from 256 to 768 units) and with 4, 5 and 6 conv layers, and
dissects each network's last conv layer (units and a random rotation) on the probe set;
also fits a linear probe on held-out scene labels. Writes results.json, comparison.png and
summary.html to the workdir (default runs/width_depth-<config>).
"""

from __future__ import annotations

import dataclasses
import sys

from experiments import compare
from experiments.cli import experiment_main
from experiments.compare import CommonConfig, Variant, run_comparison, unique_claim


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(CommonConfig):
    widths: tuple[str, ...] = ("0.5", "1", "2", "3")
    depths: tuple[str, ...] = ("4", "5", "6")


PRESETS = {
    **compare.PRESETS,
    "smoke": {**compare.PRESETS["smoke"], "widths": ("1", "2"), "depths": ("4",)},
}


def claims(rows: dict, seeds: list[int]) -> list[dict]:
    """The widest conv5 against the 1x one; the deepest network against the shallowest (the
    1x network has 5 conv layers)."""
    found = []
    widest = max(rows, key=lambda name: float(name[7:]) if name.startswith("width_x") else 0)
    if widest != "width_x1" and "width_x1" in rows:
        found.append(
            unique_claim(rows, "a wider conv5 has more unique detectors", widest, "width_x1", seeds)
        )
    by_depth = {int(name[6:]): name for name in rows if name.startswith("depth_")}
    if "width_x1" in rows:
        by_depth[5] = "width_x1"
    if len(by_depth) > 1:
        deepest, shallowest = by_depth[max(by_depth)], by_depth[min(by_depth)]
        found.append(
            unique_claim(rows, "deeper networks are more interpretable", deepest, shallowest, seeds)
        )
    return found


def variants(config: Config) -> list[Variant]:
    found = [Variant(f"width_x{w}", (f"last_width={w}",)) for w in config.widths]
    found += [Variant(f"depth_{d}", (f"depth={d}",)) for d in config.depths if d != "5"]
    return found


def run(config, workdir, progress: bool = True) -> dict:
    return run_comparison(
        variants(config),
        config,
        workdir,
        "Unique detectors against width and depth",
        progress,
        claims=claims,
        study="width_depth",
    )


def main(argv=None) -> int:
    return experiment_main("width_depth", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
