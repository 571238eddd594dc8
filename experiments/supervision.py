"""Supervised, self-supervised, untrained and fine-tuned networks, dissected side by side.

    python -m experiments.supervision [--config smoke|default|full] [--workdir DIR] [key=value ...]

Trains the AlexNet-style network with scene supervision and with a self-supervised
objective (predicting which quarter turn was applied to the image), keeps the untrained
initialisation (step 0 of the supervised run), and fine-tunes the self-supervised network
on scenes (as the paper's ImageNet -> Places study fine-tunes one task's network on
another). Each one's last conv layer is dissected (units and a random rotation), and a
linear probe on held-out scene labels measures how discriminative it is: the paper's
interpretability against discrimination. Writes results.json, comparison.png and
summary.html to the workdir (default runs/supervision-<config>). Transfer: the fine-tuned
network's units before (the self-supervised network) and after fine-tuning, which keep
their label, which change, and from which category to which.
"""

from __future__ import annotations

import html
import sys

from experiments.cli import experiment_main
from experiments.compare import PRESETS, CommonConfig, Variant, run_comparison, unique_claim
from experiments.units import across_seeds, category_flow, transitions, unit_labels

VARIANTS = [
    Variant("supervised"),
    Variant("untrained", run="supervised", step=0),
    Variant("self_supervised", ("objective=rotation",)),
    Variant("fine_tuned", init_from_variant="self_supervised"),
]


def claims(rows: dict, seeds: list[int]) -> list[dict]:
    return [
        unique_claim(
            rows,
            "supervised networks have more unique detectors than self-supervised ones",
            "supervised",
            "self_supervised",
            seeds,
        ),
        unique_claim(
            rows,
            "self-supervised networks have more unique detectors than untrained ones",
            "self_supervised",
            "untrained",
            seeds,
        ),
    ]


def transfer(dissections: dict, seeds: list[int], threshold: float) -> tuple[dict, str]:
    """The fine-tuned network's units before (self_supervised) and after (fine_tuned)
    fine-tuning: per seed, how many keep, switch, gain or lose a label, and the flow of
    their categories."""
    pairs = [
        (
            unit_labels(dissections["self_supervised"][seed], threshold),
            unit_labels(dissections["fine_tuned"][seed], threshold),
        )
        for seed in seeds
    ]
    found = {
        "before": "self_supervised",
        "after": "fine_tuned",
        "transitions": across_seeds([transitions(*pair) for pair in pairs]),
        "category_flow": across_seeds([category_flow(*pair) for pair in pairs]),
    }
    rows = "".join(
        f"<tr><td>{html.escape(name.replace('_', ' '))}</td><td>{stat['mean']:.1f}</td>"
        f"<td>{stat['per_seed']}</td></tr>"
        for part in ("transitions", "category_flow")
        for name, stat in found[part].items()
    )
    page = (
        "<h2>Transfer: units before and after fine-tuning</h2><p>The self-supervised "
        "network's units (before) against the same units after fine-tuning on scenes: how "
        "many keep their label, switch, gain or lose one, and from which category to which "
        "(none: no label).</p><table><tr><th>units that</th><th>mean over seeds</th>"
        f"<th>per seed</th></tr>{rows}</table>"
    )
    return {"transfer": found}, page


def run(config, workdir, progress: bool = True) -> dict:
    return run_comparison(
        VARIANTS,
        config,
        workdir,
        "Supervision and interpretability",
        progress,
        claims=claims,
        analysis=lambda found, seeds: transfer(found, seeds, config.dissect.iou_threshold),
        study="supervision",
    )


def main(argv=None) -> int:
    return experiment_main("supervision", __doc__, PRESETS, CommonConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
