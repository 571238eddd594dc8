"""Supervised, self-supervised, untrained and fine-tuned networks, dissected side by side.

    python -m experiments.supervision [--config smoke|default|full] [--workdir DIR] [key=value ...]

Trains the AlexNet-style network with scene supervision and with a self-supervised
objective (predicting which quarter turn was applied to the image), keeps the untrained
initialisation (step 0 of the supervised run), and fine-tunes the self-supervised network
on scenes (as the paper's ImageNet -> Places study fine-tunes one task's network on
another). Each one's last conv layer is dissected (units and a random rotation), and a
linear probe on held-out scene labels measures how discriminative it is: the paper's
interpretability against discrimination. Writes results.json, comparison.png and
summary.html to the workdir (default runs/supervision-<config>).
"""

from __future__ import annotations

import sys

from experiments.common import experiment_main
from experiments.compare import PRESETS, CommonConfig, Variant, run_comparison

VARIANTS = [
    Variant("supervised"),
    Variant("untrained", run="supervised", step=0),
    Variant("self_supervised", ("objective=rotation",)),
    Variant("fine_tuned", init_from_variant="self_supervised"),
]


def run(config, workdir, progress: bool = True) -> dict:
    return run_comparison(VARIANTS, config, workdir, "Supervision and interpretability", progress)


def main(argv=None) -> int:
    return experiment_main("supervision", __doc__, PRESETS, CommonConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
