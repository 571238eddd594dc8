"""The ``directions`` command's analysis: per concept, a learned linear combination of a
layer's units (Net2Vec; the method is ``net2vec``'s docstring), beside the best single unit.

``directions`` runs it through the pipeline's machinery (``driver.run_analysis``): one pass
keeps the layer in memory (``driver.read_layer``), ``direction_fit.fit_layer`` trains and
scores the directions, and ``report.directions`` writes the files, published as a set under
OUT's lock beside the run's fingerprint, so that a rerun of the same inputs and settings
reads them back instead.
"""

from __future__ import annotations

import dataclasses
import functools
import time

from jaxdissect.compositional.direction_fit import DirectionConfig, Directions, fit_layer
from jaxdissect.config import DissectConfig
from jaxdissect.driver import Analysis, LayerInputs, read_layer, run_analysis
from jaxdissect.report.directions import read_directions, write_directions


def directions(
    dataset,
    source,
    config=None,
    out=None,
    *,
    layer: str | None = None,
    weights=None,
    settings: DirectionConfig | None = None,
    labels=None,
    images=None,
    cache=None,
    report: bool = True,
    progress: bool = True,
) -> Directions:
    """Trains and scores a direction for every concept with enough pixels in one layer: the
    function the CLI's ``directions`` command, the study and Python users call.

    Args:
      dataset: a Broden-format folder or ``open_broden``'s dataset.
      source: a features .npy path or array, an ``Activations``, or a ``FeatureModel``.
      config: the ``DissectConfig`` whose quantile sets the units' thresholds, and whose
        kernel and batch size run the units' passes (its union rule is always ``paper``).
      out: where to write directions.csv, directions.npz, directions.json and
        directions.html (None: nowhere); a finished run of the same inputs and settings
        there is read back.
      layer: the layer (required for a model; a features file's name otherwise).
      weights: the model's weights file (for its identity).
      settings: the ``DirectionConfig``.
      labels, images, cache: the decoded labels and images, when the caller has them.
      report: write directions.html.
      progress: progress bars.

    Returns:
      ``Directions``; each of its rows: label, category, iou_direction, iou_best_unit,
      best_unit (1-based), iou_best_unit_heldout and best_unit_heldout (the unit best on the
      held-out images), iou_chance (the mask covering every counted pixel), the same on the
      train images, threshold, pixels on each side, the final loss and the top units.
    """
    config = dataclasses.replace(config or DissectConfig(), union="paper", top_images=0)
    settings = settings or DirectionConfig()
    analysis = Analysis(
        "directions",
        dataclasses.asdict(settings),
        functools.partial(_fit, settings=settings),
        write_directions,
        read_directions,
    )
    return run_analysis(
        analysis, dataset, source, config, out, layer=layer, weights=weights, labels=labels,
        images=images, cache=cache, report=report, progress=progress,
    )  # fmt: skip


def _fit(inputs: LayerInputs, settings: DirectionConfig) -> Directions:
    started = time.perf_counter()
    acts = read_layer(inputs.source, inputs.layer, inputs.config.batch_size, inputs.progress)
    seconds = {"activations": time.perf_counter() - started}
    found = fit_layer(inputs, acts, settings)
    return found._replace(seconds={**seconds, **found.seconds})
