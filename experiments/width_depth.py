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
from experiments.common import experiment_main
from experiments.compare import CommonConfig, Variant, run_comparison


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(CommonConfig):
    widths: tuple[str, ...] = ("0.5", "1", "2", "3")
    depths: tuple[str, ...] = ("4", "5", "6")


PRESETS = {
    **compare.PRESETS,
    "smoke": {**compare.PRESETS["smoke"], "widths": ("1", "2"), "depths": ("4",)},
}


def variants(config: Config) -> list[Variant]:
    found = [Variant(f"width_x{w}", (f"last_width={w}",)) for w in config.widths]
    found += [Variant(f"depth_{d}", (f"depth={d}",)) for d in config.depths if d != "5"]
    return found


def run(config, workdir, progress: bool = True) -> dict:
    return run_comparison(
        variants(config), config, workdir, "Unique detectors against width and depth", progress
    )


def main(argv=None) -> int:
    return experiment_main("width_depth", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
