"""The ``formulas`` command's analysis: every unit's best formula of concepts in one layer.

``explain`` runs it through the pipeline's machinery (``driver.run_analysis``): the layer's
thresholds (the dissection's pass 1), the packed masks (``counting.build_problem``), the
candidates, the beam search (``search``) and, when asked, the exact search (``exact``);
then the files of ``report.formulas``, published as a set under OUT's lock beside the run's
fingerprint, so that a rerun of the same inputs and settings reads them back instead.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from jaxdissect.compositional.counting import build_problem, select_counter
from jaxdissect.compositional.exact import exact_search, exact_search_bytes, memory_budget
from jaxdissect.compositional.search import Explanations, beam_search, choose_candidates
from jaxdissect.config import DissectConfig
from jaxdissect.driver import Analysis, LayerInputs, run_analysis
from jaxdissect.errors import DissectError
from jaxdissect.passes import compute_thresholds
from jaxdissect.report.formulas import read_formulas, write_formulas


def explain(
    dataset,
    source,
    config=None,
    out=None,
    *,
    layer: str | None = None,
    weights=None,
    length: int = 3,
    beam: int = 10,
    exact: bool = False,
    shorter: bool = False,
    labels_per_unit: int = 40,
    labels=None,
    images=None,
    cache=None,
    report: bool = True,
    progress: bool = True,
) -> Explanations:
    """The best formula of concepts for every unit of one layer; the function the CLI's
    ``formulas`` command, the study and Python users call.

    Args:
      dataset: a Broden-format folder or ``open_broden``'s dataset.
      source: a features .npy path or array, an ``Activations``, or a ``FeatureModel``.
      config: the ``DissectConfig`` whose quantile (and kernel) set the thresholds.
      out: where to write formulas.csv, formulas.json, formulas.npz and formulas.html
        (None: nowhere); a finished run of the same inputs and settings there is read back.
      layer: the layer (required for a model; a features file's name otherwise).
      weights: the model's weights file (for its identity).
      length: the longest formula (N); beam: the beam width; exact: also run the exact
        search and report its formulas; shorter: also the exact optimum at every length
        1 .. N - 1; labels_per_unit: candidates per unit.
      labels, images, cache: the decoded labels and images, when the caller has them.
      report: write formulas.html.
      progress: progress bars.
    """
    if length < 1 or beam < 1 or labels_per_unit < 1:
        raise DissectError(
            "`length`, `beam` and `labels_per_unit` must be >= 1",
            arguments=("length", "beam", "labels_per_unit"),
        )
    settings = dict(
        length=length, beam=beam, exact=exact, shorter=shorter, labels_per_unit=labels_per_unit
    )
    analysis = Analysis(
        "formulas",
        settings,
        functools.partial(search_layer, **settings),
        write_formulas,
        read_formulas,
        functools.partial(check_memory, length=length, exact=exact, per_unit=labels_per_unit),
        shows_images=True,
    )
    return run_analysis(
        analysis, dataset, source, config or DissectConfig(), out, layer=layer, weights=weights,
        labels=labels, images=images, cache=cache, report=report, progress=progress,
    )  # fmt: skip


# The most memory an exact search may plan for, whatever the machine has: beyond it the
# search runs for hours (its levels grow as (4k)^length) on any machine.
EXACT_MAX_BYTES = 8 * 2**30


def check_memory(dataset, shape, *, length: int, exact: bool, per_unit: int) -> None:
    """Refuses, before any work, a formula longer than the labels it may draw on, and an
    exact search whose levels (they grow as (4k)^length) may not fit this process's memory,
    or EXACT_MAX_BYTES."""
    # A formula holds each label at most once: a longer one does not exist (the search
    # would only spend time, and the exact search memory, on the attempt).
    available = min(per_unit, dataset.num_labels - 1)
    if length > available:
        raise DissectError(
            f"`length` {length}: longer than the {available} labels a formula may draw on "
            f"(`labels_per_unit` {per_unit}; {dataset.directory} has "
            f"{dataset.num_labels - 1} labels), and a formula holds each label at most once",
            arguments=("length", "labels_per_unit"),
        )
    if not exact or length < 3:
        return
    units, k = shape[-1], min(per_unit, dataset.num_labels)
    needed, budget = exact_search_bytes(units, k, length), memory_budget()
    if needed > budget or needed > EXACT_MAX_BYTES:
        limit = (
            f"the {budget / 2**30:.1f} GiB this process may use"
            if budget < EXACT_MAX_BYTES
            else f"the exact search's limit of {EXACT_MAX_BYTES / 2**30:.1f} GiB"
        )
        raise DissectError(
            f"--exact --length {length} over {units} units with {k} labels per unit may "
            f"need {needed / 2**30:.1f} GiB, more than {limit}; lower --length or "
            "--labels-per-unit"
        )


def search_layer(
    inputs: LayerInputs, *, length: int, beam: int, exact: bool, shorter: bool,
    labels_per_unit: int,
) -> Explanations:  # fmt: skip
    """The analysis itself: thresholds, masks, candidates, then the searches."""
    dataset, labels, source, layer, config = inputs[:5]
    seconds = {}
    started = time.perf_counter()
    thresholds = compute_thresholds(
        source.read, source.num_images, {layer: source.shapes[layer]}, config, inputs.progress
    )[layer].thresholds
    problem = build_problem(
        source.read, source.num_images, layer, thresholds, labels, dataset.label_size,
        dataset.num_labels, config.batch_size, inputs.progress,
    )  # fmt: skip
    if not len(problem.concept_labels):
        raise DissectError(f"{dataset.directory}: no label covers any pixel")
    counter = select_counter(config)
    candidates = choose_candidates(problem, labels_per_unit, counter)
    seconds["masks"] = time.perf_counter() - started
    started = time.perf_counter()
    beam_result = beam_search(problem, candidates, length, beam, counter)
    seconds["beam"] = time.perf_counter() - started
    exact_result = None
    if exact:
        started = time.perf_counter()
        exact_result = exact_search(
            problem, candidates, length, counter=counter, incumbent=beam_result
        )
        seconds["exact"] = time.perf_counter() - started
    lengths = range(1, length) if shorter else ()
    return Explanations(
        layer, dataset.label_names, np.asarray(thresholds), problem.concept_labels, problem,
        candidates, exact_result if exact else beam_result, beam_result, exact_result,
        tuple(exact_search(problem, candidates, n, counter=counter) for n in lengths), seconds,
    )  # fmt: skip
