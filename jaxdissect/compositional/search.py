"""The best formula of concepts for every unit: what both searches share, and the beam search.

Both search the programs of ``formulas`` (a formula extended one concept at a time by AND,
OR, AND NOT, or ``(x AND NOT F)``) over each unit's candidate concepts: its
``labels_per_unit`` best single labels by IoU, as Mu & Andreas (2020) do. Every candidate is
counted exactly on the packed masks (a ``Counter``: compiled loops on the CPU, or the jitted
``formulas.extension_counts`` sharded over devices): expanding a formula F
gives, for every candidate x, t = |u & F & x| and |F & x|, from which all four children's
intersections and areas follow:

    (F AND x):  I = t,          |M| = |F & x|
    (F OR x):   I = I_F + a_x - t,   |M| = |F| + |x| - |F & x|
    (F AND NOT x): I = I_F - t, |M| = |F| - |F & x|
    (x AND NOT F): I = a_x - t, |M| = |x| - |F & x|

with a_x = |u & x|; IoU = I / (|u| + |M| - I).

Beam search (``beam_search``) keeps the ``beam`` best formulas found so far and expands them.
The exact search (``exact.exact_search``) expands every single concept (which yields the pair
counts |u & x & y| and |x & y| of all candidates), then expands longer formulas best-first
while their upper bound exceeds the best IoU found; see ``child_bounds`` for the bound on the
last step and ``reach_bound`` for earlier ones. A unit is *certified* when every formula
left unexpanded has a bound at or below the best IoU; ``bound`` is then that IoU (gap 0),
else the largest bound left.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxdissect.compositional.counting import Counter, Problem, select_counter, unit_concept_counts
from jaxdissect.compositional.formulas import append_every_step, empty_programs

# A bound within this of the best IoU cannot hide a better formula (float64 ratios of
# integer counts below 2**53 differ from the exact values by far less).
TOLERANCE = 1e-12


class SearchResult(NamedTuple):
    """Each unit's best formula.

    Attributes:
      labels: (U, N) concept rows of the program (-1 past its length).
      ops: (U, N - 1) operator codes (``formulas.NOP`` past its length).
      iou: (U,) float64.
      intersection, area: (U,) int64 |M_u & M_F| and |M_F|.
      certified: (U,) bool, proved optimal.
      bound: (U,) float64 the largest upper bound left unexplored (= iou when certified;
        NaN for beam search).
      expansions: (U,) formulas expanded (each scores all its children at once), plus the
        exact search's last-step children scored one by one.
    """

    labels: np.ndarray
    ops: np.ndarray
    iou: np.ndarray
    intersection: np.ndarray
    area: np.ndarray
    certified: np.ndarray
    bound: np.ndarray
    expansions: np.ndarray


def iou_of(intersection, area, unit_area) -> np.ndarray:
    """IoU = I / (|u| + |M| - I), 0 where the union is empty."""
    intersection = np.asarray(intersection, np.float64)
    union = np.asarray(unit_area, np.float64) + np.asarray(area, np.float64) - intersection
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


class Candidates(NamedTuple):
    """Each unit's candidate concepts and their single-concept counts.

    Attributes:
      rows: (U, K) concept rows, best single IoU first.
      intersection: (U, K) int64 a_x = |u & x|.
      area: (U, K) int64 |x|.
      unit_area: (U,) int64 |u|.
    """

    rows: np.ndarray
    intersection: np.ndarray
    area: np.ndarray
    unit_area: np.ndarray


def choose_candidates(
    problem: Problem, per_unit: int, counter: Counter | None = None
) -> Candidates:
    """Each unit's ``per_unit`` best concepts by single IoU (ties: lower row first); concepts
    with an empty mask never count."""
    inter, unit_area, concept_area = unit_concept_counts(problem, counter)
    single = iou_of(inter, concept_area[None, :], unit_area[:, None])
    single = np.where(concept_area[None, :] > 0, single, -1.0)
    per_unit = min(per_unit, int((concept_area > 0).sum()))
    if per_unit < 1:
        raise ValueError("no concept has a non-empty mask")
    rows = np.argsort(-single, axis=1, kind="stable")[:, :per_unit]
    return Candidates(
        rows,
        np.take_along_axis(inter, rows, 1),
        concept_area[rows],
        unit_area,
    )


def expand(
    problem: Problem,
    candidates: Candidates,
    labels: np.ndarray,
    ops: np.ndarray,
    units: np.ndarray | None = None,
    counter: Counter | None = None,
):
    """Counts of every one-concept extension of programs (U', B, n) / (U', B, n - 1) over the
    candidates of ``units`` (default all): (t (U', B, K), |F & x| (U', B, K), I_F (U', B),
    |F| (U', B)), int64."""
    if units is None:
        units = np.arange(problem.unit_bits.shape[0])
    counter = counter or select_counter()
    return counter.extensions(problem, candidates.rows, labels, ops, units)


def children(candidates: Candidates, t, both, inter, area) -> tuple[np.ndarray, np.ndarray]:
    """(I, |M|) of every child, (U, B, 4, K) in ``OPERATORS`` order."""
    a = candidates.intersection[:, None, :]
    s = candidates.area[:, None, :]
    inter, area = inter[..., None], area[..., None]
    child_inter = np.stack([t, inter + a - t, inter - t, a - t], axis=2)
    child_area = np.stack([both, area + s - both, area - both, s - both], axis=2)
    return child_inter, child_area


def valid_children(labels, ops, singles_expanded: np.ndarray | None) -> np.ndarray:
    """(U, B, 4, K) bool: children that are new formulas. A concept already in the program
    is not added again; and for a single-concept parent x whose partner y is also expanded
    as a single concept (``singles_expanded`` (U, K)), ``(x AND y)`` and ``(x OR y)`` are
    kept only for x < y, ``(y AND NOT x)`` only from y's side."""
    units, batch, length = labels.shape
    k = singles_expanded.shape[1]
    used = np.zeros((units, batch, k), bool)
    for position in range(length):
        present = labels[:, :, position] >= 0
        u_index, b_index = np.nonzero(present)
        used[u_index, b_index, labels[u_index, b_index, position]] = True
    valid = np.broadcast_to(~used[:, :, None, :], (units, batch, 4, k)).copy()
    single = (labels[:, :, 1:] < 0).all(-1) if length > 1 else np.ones((units, batch), bool)
    x = labels[:, :, 0]
    partner = np.arange(k)[None, None, :]
    twin = single[..., None] & singles_expanded[:, None, :]  # (U, B, K)
    valid[:, :, 0] &= ~(twin & (partner < x[..., None]))
    valid[:, :, 1] &= ~(twin & (partner < x[..., None]))
    valid[:, :, 3] &= ~twin
    return valid


def beam_search(
    problem: Problem,
    candidates: Candidates,
    length: int = 3,
    beam: int = 10,
    counter: Counter | None = None,
):
    """Mu & Andreas's beam search: keep the ``beam`` best formulas found so far, extend each
    by every candidate and operator, ``length - 1`` times; the best formula seen wins."""
    counter = counter or select_counter()
    units, k = candidates.rows.shape
    width = min(beam, k)
    single_iou = iou_of(candidates.intersection, candidates.area, candidates.unit_area[:, None])
    labels, ops = empty_programs(units, width, length)
    labels[:, :, 0] = np.arange(width)  # candidates are sorted by single IoU
    beam_iou = single_iou[:, :width]
    beam_inter = candidates.intersection[:, :width]
    beam_area = candidates.area[:, :width]
    expansions = np.zeros(units, np.int64)
    for _ in range(length - 1):
        t, both, inter, area = expand(problem, candidates, labels, ops, counter=counter)
        expansions += width
        child_inter, child_area = children(candidates, t, both, inter, area)
        singles = np.zeros((units, k), bool)
        is_single = (labels[:, :, 1:] < 0).all(-1)
        u_index, b_index = np.nonzero(is_single)
        singles[u_index, labels[u_index, b_index, 0]] = True
        valid = valid_children(labels, ops, singles)
        child_iou = np.where(
            valid, iou_of(child_inter, child_area, candidates.unit_area[:, None, None, None]), -1.0
        )
        count = child_iou.shape[1] * 4 * k
        grown_labels, grown_ops = append_every_step(labels, ops, k, length)
        pool = {
            "iou": (beam_iou, child_iou.reshape(units, count)),
            "inter": (beam_inter, child_inter.reshape(units, count)),
            "area": (beam_area, child_area.reshape(units, count)),
            "labels": (labels, grown_labels),
            "ops": (ops, grown_ops),
        }
        pool = {name: np.concatenate(parts, axis=1) for name, parts in pool.items()}
        # Stable: among equal IoUs the formulas already in the beam (shorter) stay first.
        best = np.argsort(-pool["iou"], axis=1, kind="stable")[:, :width]
        beam_iou, beam_inter, beam_area = (
            np.take_along_axis(pool[name], best, 1) for name in ("iou", "inter", "area")
        )
        labels = np.take_along_axis(pool["labels"], best[..., None], 1)
        ops = np.take_along_axis(pool["ops"], best[..., None], 1)
    return SearchResult(
        labels=to_rows(candidates, labels[:, 0]),
        ops=ops[:, 0],
        iou=beam_iou[:, 0],
        intersection=beam_inter[:, 0],
        area=beam_area[:, 0],
        certified=np.zeros(units, bool),
        bound=np.full(units, np.nan),
        expansions=expansions,
    )


def to_rows(candidates: Candidates, labels: np.ndarray) -> np.ndarray:
    """Programs over candidate indices -> over concept rows (-1 kept)."""
    rows = np.take_along_axis(candidates.rows, np.maximum(labels, 0), 1)
    return np.where(labels >= 0, rows, -1)


def to_candidates(candidates: Candidates, rows: np.ndarray) -> np.ndarray:
    """Programs over concept rows -> over candidate indices (-1 kept); the inverse of
    ``to_rows`` (every row of a program is one of its unit's candidates)."""
    index = (candidates.rows[:, None, :] == rows[:, :, None]).argmax(-1)
    return np.where(rows >= 0, index, -1)


class Explanations(NamedTuple):
    """A layer's formulas, ready to write.

    Attributes:
      layer: the layer's name.
      label_names: the dataset's label names.
      thresholds: (U,) float32 the units' thresholds.
      concept_labels: (C,) the label number of each concept row.
      problem: the packed masks (None when read back from a finished run's outputs).
      candidates: each unit's candidates.
      result: the reported search (exact when run, else beam).
      beam: the beam search's result.
      exact: the exact search's result, or None.
      shorter: the exact search's results at lengths 1 .. length - 1, when asked for.
      seconds: {"masks", "beam", "exact"} wall times.
    """

    layer: str
    label_names: tuple[str, ...]
    thresholds: np.ndarray
    concept_labels: np.ndarray
    problem: Problem | None
    candidates: Candidates
    result: SearchResult
    beam: SearchResult
    exact: SearchResult | None
    shorter: tuple[SearchResult, ...]
    seconds: dict
