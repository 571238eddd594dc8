"""The best formula of concepts for every unit: beam search, and an exact branch and bound.

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
The exact search (``exact_search``) expands every single concept (which yields the pair
counts |u & x & y| and |x & y| of all candidates), then expands longer formulas best-first
while their upper bound exceeds the best IoU found; see ``child_bounds`` for the bound on the
last step and ``reach_bound`` for earlier ones. A unit is *certified* when every formula
left unexpanded has a bound at or below the best IoU; ``bound`` is then that IoU (gap 0),
else the largest bound left.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.compositional import formulas
from jaxdissect.compositional.formulas import AND, ANDNOT, NOP, NOTAND, OR

OPERATORS = (AND, OR, ANDNOT, NOTAND)
# A bound within this of the best IoU cannot hide a better formula (float64 ratios of
# integer counts below 2**53 differ from the exact values by far less).
TOLERANCE = 1e-12


class Problem(NamedTuple):
    """Packed masks of the units and concepts over all probe images.

    Attributes:
      unit_bits: (U, W) uint32 each unit's mask (W words, a multiple of ``chunk_words``).
      concept_bits: (C, W) uint32 each concept's mask.
      concept_labels: (C,) the label number of each concept row.
      pixels: the number of (real) pixels over all images.
      chunk_words: words counted per device call (a whole number of images).
    """

    unit_bits: np.ndarray
    concept_bits: np.ndarray
    concept_labels: np.ndarray
    pixels: int
    chunk_words: int


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


def chunk_words_for(units: int, per_unit: int, words_per_image: int, budget: int) -> int:
    """Words per device call, a whole number of images, so that the (U, K, words) candidate
    masks the kernel gathers take about ``budget`` bytes."""
    images = max(1, budget // max(1, 4 * units * per_unit * words_per_image))
    return images * words_per_image


def problem_from_masks(
    unit_masks: np.ndarray,
    concept_masks: np.ndarray,
    concept_labels: np.ndarray,
    chunk_images: int = 64,
) -> Problem:
    """A Problem from boolean masks (U, N, P) of the units and (C, N, P) of the concepts."""
    from jaxdissect.compositional.formulas import pack_bits

    images, pixels = unit_masks.shape[1:]
    words = -(-pixels // 32)
    chunk_images = min(chunk_images, images)
    padded = -(-images // chunk_images) * chunk_images

    def packed(masks):
        bits = pack_bits(masks)
        bits = np.pad(bits, ((0, 0), (0, padded - images), (0, 0)))
        return bits.reshape(len(masks), padded * words)

    return Problem(
        packed(unit_masks),
        packed(concept_masks),
        np.asarray(concept_labels),
        images * pixels,
        chunk_images * words,
    )


class Counter(NamedTuple):
    """How the packed masks are counted: ``cpu_counter`` (compiled loops over the cores) or
    ``xla_counter`` (jitted, the words sharded over every device). Both give the same
    integers; ``select_counter`` picks one, once.

    Attributes:
      intersections: ``(problem)`` -> (U, C) int64 |u & c|.
      extensions: ``(problem, rows, labels, ops, units)`` -> t, |F & x| (U', B, K) and I_F,
        |F| (U', B), int64: every one-concept extension of programs (U', B, n) over the
        candidates ``rows[units]`` (``formulas.extension_counts``).
      formulas: ``(problem, rows, labels, ops, units)`` -> (|u & F|, |F|) (U', M) int64.
      pairs: ``(problem, rows, units)`` -> (|u & x & y|, |x & y|) (U', K, K) int64 of every
        pair of candidates.
      partners: ``(problem, rows, labels, ops, parents, partners, units)`` -> (|u & F & x|,
        |F & x|) (U', R) int64 of pairs of a program F (U', R, n) and a candidate x
        ``partners`` (U', R); pairs with equal ``parents`` (U', R) have the same F, and
        those with a negative one need not be counted.
    """

    intersections: Callable
    extensions: Callable
    formulas: Callable
    pairs: Callable
    partners: Callable


def cpu_counter() -> Counter:
    """Counts with Numba loops on the CPU cores (``formula_cpu``)."""
    from jaxdissect.compositional import formula_cpu

    def programs(kernel):
        def count(problem, rows, labels, ops, units):
            return kernel(
                problem.unit_bits, problem.concept_bits, np.asarray(rows, np.int64),
                np.ascontiguousarray(labels, np.int64), np.ascontiguousarray(ops, np.int64),
                np.asarray(units, np.int64),
            )  # fmt: skip

        return count

    def partners(problem, rows, labels, ops, parents, partners, units):
        return formula_cpu.partner_counts(
            problem.unit_bits, problem.concept_bits, np.asarray(rows, np.int64),
            *(np.ascontiguousarray(a, np.int64) for a in (labels, ops, parents, partners, units)),
        )  # fmt: skip

    def pairs(problem, rows, units):
        return formula_cpu.pair_counts(
            problem.unit_bits, problem.concept_bits, np.asarray(rows, np.int64),
            np.asarray(units, np.int64),
        )  # fmt: skip

    return Counter(
        lambda problem: formula_cpu.intersection_counts(problem.unit_bits, problem.concept_bits),
        programs(formula_cpu.extension_counts),
        programs(formula_cpu.formula_counts),
        pairs,
        partners,
    )


@functools.cache
def xla_counter() -> Counter:
    """Counts with the jitted kernels of ``formulas``, each chunk of words split over a
    ``Mesh`` of all devices (axis "data"): every device counts its words and the int32
    partial counts are summed (``psum``), so any device count gives the same integers.
    Units are padded to powers of two and chunks to a fixed width, so few shapes compile."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    words = NamedSharding(mesh, PartitionSpec(None, "data"))

    def sharded(kernel, arguments):
        def summed(*args):
            return jax.tree.map(lambda c: jax.lax.psum(c, "data"), kernel(*args))

        specs = (PartitionSpec(None, "data"),) * 2 + (PartitionSpec(),) * (arguments - 2)
        return jax.jit(jax.shard_map(summed, mesh=mesh, in_specs=specs, out_specs=PartitionSpec()))

    def chunks(problem: Problem, unit_rows):
        """Chunks of words of the units' and concepts' masks, placed on the mesh (zero
        words pad each to a multiple of the devices: they count nothing)."""
        width = -(-problem.chunk_words // mesh.size) * mesh.size
        for start in range(0, problem.unit_bits.shape[1], problem.chunk_words):
            stop = start + problem.chunk_words
            yield tuple(
                jax.device_put(_pad_columns(bits[:, start:stop], width), words)
                for bits in (problem.unit_bits[unit_rows], problem.concept_bits)
            )

    intersect = sharded(formulas.intersection_counts, 2)

    def intersections(problem):
        units = np.arange(problem.unit_bits.shape[0])
        return sum(np.asarray(intersect(u, c), np.int64) for u, c in chunks(problem, units))

    def programs(kernel):
        step = sharded(kernel, 5)

        def count(problem, rows, labels, ops, units):
            padded = np.concatenate([units, np.full(_bucket(len(units)) - len(units), units[-1])])
            pad = len(padded) - len(units)
            labels = np.maximum(np.concatenate([labels, labels[-1:].repeat(pad, 0)]), 0)
            ops = np.concatenate([ops, ops[-1:].repeat(pad, 0)])
            small = [jnp.asarray(a, jnp.int32) for a in (rows[padded], labels, ops)]
            totals = None
            for unit_bits, concept_bits in chunks(problem, padded):
                counts = [np.asarray(c, np.int64) for c in step(unit_bits, concept_bits, *small)]
                totals = (
                    counts
                    if totals is None
                    else [a + b for a, b in zip(totals, counts, strict=True)]
                )
            return [c[: len(units)] for c in totals]

        return count

    extension_step = programs(formulas.extension_counts)
    formula_step = programs(formulas.formula_counts)

    def pairs(problem, rows, units):
        """Every single candidate expanded."""
        labels, ops = _empty_programs(len(units), rows.shape[1], 1)
        labels[:, :, 0] = np.arange(rows.shape[1])
        return extension_step(problem, rows, labels, ops, units)[:2]

    def partners(problem, rows, labels, ops, parents, partners, units):
        """|u & (F AND x)| and |F AND x|, by ``formula_counts``."""
        labels, ops = _append(labels, ops, np.zeros_like(partners), partners, labels.shape[-1])
        return formula_step(problem, rows, labels, ops, units)

    return Counter(intersections, extension_step, formula_step, pairs, partners)


def _pad_columns(bits: np.ndarray, width: int) -> np.ndarray:
    return np.pad(bits, ((0, 0), (0, width - bits.shape[1])))


def select_counter(config=None) -> Counter:
    """The counter of the dissection's kernel (``kernels.kernel_name``): "cpu" -> Numba loops,
    "xla" -> the sharded XLA kernels."""
    from jaxdissect.config import DissectConfig
    from jaxdissect.kernels import kernel_name

    return cpu_counter() if kernel_name(config or DissectConfig()) == "cpu" else xla_counter()


def unit_concept_counts(
    problem: Problem, counter: Counter | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(|u & c| (U, C), |u| (U,), |c| (C,)) as int64."""
    inter = np.asarray((counter or select_counter()).intersections(problem), np.int64)
    return inter, _popcount_rows(problem.unit_bits), _popcount_rows(problem.concept_bits)


def _popcount_rows(bits: np.ndarray) -> np.ndarray:
    return np.unpackbits(bits.view(np.uint8), axis=-1).sum(-1, dtype=np.int64)


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


def _bucket(count: int) -> int:
    """Padded batch sizes (powers of two) so that jit compiles a few shapes only."""
    return 1 << max(count - 1, 0).bit_length()


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


def _valid_children(labels, ops, singles_expanded: np.ndarray | None) -> np.ndarray:
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


def _append(labels, ops, op_index, partner, length):
    """Programs of chosen children: parents' programs with (op, partner) added."""
    position = (labels >= 0).sum(-1)
    new_labels, new_ops = labels.copy(), ops.copy()
    index = np.indices(position.shape)
    new_labels[(*index, position)] = partner
    new_ops[(*index, position - 1)] = np.asarray(OPERATORS)[op_index]
    return new_labels, new_ops


def _empty_programs(units, count, length):
    return np.full((units, count, length), -1, np.int64), np.full(
        (units, count, max(length - 1, 0)), NOP, np.int64
    )


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
    labels, ops = _empty_programs(units, width, length)
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
        valid = _valid_children(labels, ops, singles)
        child_iou = np.where(
            valid, iou_of(child_inter, child_area, candidates.unit_area[:, None, None, None]), -1.0
        )
        count = child_iou.shape[1] * 4 * k
        op_index, partner = np.unravel_index(np.arange(4 * k), (4, k))
        grown_labels, grown_ops = _append(
            np.repeat(labels, 4 * k, axis=1),
            np.repeat(ops, 4 * k, axis=1),
            np.tile(op_index, width)[None].repeat(units, 0),
            np.tile(partner, width)[None].repeat(units, 0),
            length,
        )
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
        labels=_to_rows(candidates, labels[:, 0]),
        ops=ops[:, 0],
        iou=beam_iou[:, 0],
        intersection=beam_inter[:, 0],
        area=beam_area[:, 0],
        certified=np.zeros(units, bool),
        bound=np.full(units, np.nan),
        expansions=expansions,
    )


def _to_rows(candidates: Candidates, labels: np.ndarray) -> np.ndarray:
    """Programs over candidate indices -> over concept rows (-1 kept)."""
    rows = np.take_along_axis(candidates.rows, np.maximum(labels, 0), 1)
    return np.where(labels >= 0, rows, -1)


def _to_candidates(candidates: Candidates, rows: np.ndarray) -> np.ndarray:
    """Programs over concept rows -> over candidate indices (-1 kept); the inverse of
    ``_to_rows`` (every row of a program is one of its unit's candidates)."""
    index = (candidates.rows[:, None, :] == rows[:, :, None]).argmax(-1)
    return np.where(rows >= 0, index, -1)


# float32 ratios are rounded: widen the bound by a few ulps so that it stays an upper bound.
_ROUNDING = 1.0 + 2.0**-20


def child_bounds(
    candidates: Candidates,
    pair_inter,
    pair_area,
    labels,
    ops,
    inter,
    area,
    pixels,
    valid=None,
):
    """(U, M, 4, K) upper bounds on the IoU of every child (F op x) of formulas F, without
    counting F & x (-inf where x is already in F, and for every child of a formula not
    ``valid`` (U, M), default all valid).

    A child's counts follow from t = |u & F & x| and g = |F & x - u| (see the module
    docstring): its IoU is I / (|u| + FP) with I and FP linear in t and g, so it is largest
    at an end of t's and g's ranges: AND at (max t, min g); OR, AND NOT and (x AND NOT F) at
    (min t, max g). The ranges intersect the generic ones, t in [max(0, I_F + a_x - |u|),
    min(I_F, a_x)] and g in [max(0, FP_F + fp_x - (P - |u|)), min(FP_F, fp_x)], with those
    from the pair counts of F's concepts (interval arithmetic over F's program: for
    G = (F AND y), |G & x| = |F & y & x| lies in [max(0, |F & x| + |y & x| - |x|),
    min(|F & x|, |y & x|)], and so on; ``formula_cpu._interval``). So no child exceeds its
    bound. The ratio, in float32, is widened by ``_ROUNDING``. Compiled loops
    (``formula_cpu.child_bounds``): host work, whatever counts the masks.

    Args:
      candidates: the units' candidates (a_x, |x|, |u|).
      pair_inter, pair_area: (U, K, K) |u & y & x| and |y & x| of candidate pairs.
      labels, ops: (U, M, n), (U, M, n - 1) the formulas' programs.
      inter, area: (U, M) I_F and |F|.
      pixels: P, all pixels of all images.
      valid: (U, M) bool the formulas whose children are bounded.
    """
    from jaxdissect.compositional import formula_cpu

    i64 = lambda x: np.ascontiguousarray(x, np.int64)  # noqa: E731
    return formula_cpu.child_bounds(
        i64(candidates.intersection), i64(candidates.area), i64(candidates.unit_area),
        i64(pair_inter), i64(pair_area) - i64(pair_inter), i64(labels), i64(ops), i64(inter),
        i64(area), np.ones(np.shape(inter), bool) if valid is None else np.asarray(valid, bool),
        int(pixels), np.float32(_ROUNDING),
    )  # fmt: skip


def reach_bound(candidates: Candidates, inter: np.ndarray, steps: int) -> np.ndarray:
    """(U, M) upper bound on the IoU of any formula F reaches in ``steps`` more steps.

    AND and AND NOT only shrink the mask, OR x adds at most a_x pixels of the unit, and
    (x AND NOT F) has at most a_x; so the final intersection is at most
    I_F + (sum of the ``steps`` largest a_x), and its union at least |u|.
    """
    largest = -np.sort(-candidates.intersection, axis=1)[:, :steps].sum(1)
    n_u = candidates.unit_area.astype(np.float64)
    reach = np.minimum(inter + largest[:, None], n_u[:, None])
    return np.divide(reach, n_u[:, None], out=np.zeros(reach.shape), where=n_u[:, None] > 0)


def exact_search(
    problem: Problem,
    candidates: Candidates,
    length: int = 3,
    round_size: int = 16,
    max_expansions: int | None = None,
    child_round: int = 256,
    max_evaluations: int | None = None,
    counter: Counter | None = None,
    incumbent: SearchResult | None = None,
) -> SearchResult:
    """The best formula of length <= ``length`` over each unit's candidates, with a
    certificate.

    Every single concept is expanded (all pairs counted exactly); longer formulas are
    expanded best-first, ``round_size`` per unit and round, while their bound
    (``child_bounds`` for the last step, ``reach_bound`` before) exceeds the best IoU found.
    At the last step the children are scored one by one instead (``formula_counts``),
    ``child_round`` per unit and round, best bound first, while their bound
    (``child_bounds``) exceeds the best IoU. ``max_expansions`` and ``max_evaluations`` cap
    the expansions and last-step children per unit: a unit stopped by them is reported
    uncertified, with the largest bound it left. ``counter``: how masks are counted
    (default ``select_counter()``). ``incumbent``: formulas over the same candidates and
    ``length`` (the beam search's) that start as the best found, so that their IoU prunes from the start;
    the optimum's IoU and the certificate do not change, only which of equally good
    formulas is reported.
    """
    counter = counter or select_counter()
    units, k = candidates.rows.shape
    n_u = candidates.unit_area
    all_units = np.arange(units)
    single_iou = iou_of(candidates.intersection, candidates.area, n_u[:, None])
    best_labels, best_ops = _empty_programs(units, 1, length)
    best_labels, best_ops = best_labels[:, 0], best_ops[:, 0]
    best_labels[:, 0] = 0
    best_iou = single_iou[:, 0].copy()
    best_inter = candidates.intersection[:, 0].copy()
    best_area = candidates.area[:, 0].copy()
    expansions = np.zeros(units, np.int64)
    evaluated = np.zeros(units, np.int64)
    left = np.full(units, -np.inf)  # the largest bound of what was not expanded
    best = _Best(best_labels, best_ops, best_iou, best_inter, best_area)
    if incumbent is not None:
        better = incumbent.iou > best_iou
        best_labels[better] = _to_candidates(candidates, incumbent.labels)[better]
        best_ops[better] = incumbent.ops[better]
        best_iou[better] = incumbent.iou[better]
        best_inter[better] = incumbent.intersection[better]
        best_area[better] = incumbent.area[better]

    def consider(labels, ops, child_inter, child_area, valid, subset):
        """Updates the best formulas of ``subset`` with valid children."""
        child_iou = np.where(
            valid, iou_of(child_inter, child_area, n_u[subset, None, None, None]), -1.0
        )
        flat = child_iou.reshape(len(subset), -1)
        top = flat.argmax(1)
        better = flat[np.arange(len(subset)), top] > best_iou[subset]
        parent, op_index, partner = np.unravel_index(top, child_iou.shape[1:])
        grown_labels, grown_ops = _append(
            labels[np.arange(len(subset)), parent][:, None],
            ops[np.arange(len(subset)), parent][:, None],
            op_index[:, None],
            partner[:, None],
            length,
        )
        winners = subset[better]
        best_labels[winners] = grown_labels[better, 0]
        best_ops[winners] = grown_ops[better, 0]
        best_iou[winners] = flat[better, top[better]]
        best_inter[winners] = child_inter.reshape(len(subset), -1)[better, top[better]]
        best_area[winners] = child_area.reshape(len(subset), -1)[better, top[better]]

    if length == 1:
        return SearchResult(
            _to_rows(candidates, best_labels), best_ops, best_iou, best_inter, best_area,
            np.ones(units, bool), best_iou.copy(), expansions,
        )  # fmt: skip
    # Level 1: every single concept, in groups; the pair counts serve the bounds.
    labels, ops = _empty_programs(units, k, length)
    labels[:, :, 0] = np.arange(k)
    pair_inter, pair_area = counter.pairs(problem, candidates.rows, all_units)
    singles = np.ones((units, k), bool)
    nodes = []
    for start in range(0, k, round_size):
        group = slice(start, start + round_size)
        # Expanding x: t = |u & x & y|, |x & y| for every y, and I_F = a_x, |F| = |x|.
        t, both = pair_inter[:, group], pair_area[:, group]
        inter, area = candidates.intersection[:, group], candidates.area[:, group]
        child_inter, child_area = children(candidates, t, both, inter, area)
        valid = _valid_children(labels[:, group], ops[:, group], singles)
        consider(labels[:, group], ops[:, group], child_inter, child_area, valid, all_units)
        nodes.append((labels[:, group], ops[:, group], child_inter, child_area, valid))
    expansions += k
    for level in range(2, length):
        # This level's formulas: the children of the last level's expansions.
        node_labels, node_ops, node_inter, node_area, node_valid = [], [], [], [], []
        for parent_labels, parent_ops, child_inter, child_area, valid in nodes:
            batch = parent_labels.shape[1]
            op_index, partner = np.unravel_index(np.arange(4 * k), (4, k))
            grown = _append(
                np.repeat(parent_labels, 4 * k, axis=1),
                np.repeat(parent_ops, 4 * k, axis=1),
                np.tile(op_index, batch)[None].repeat(units, 0),
                np.tile(partner, batch)[None].repeat(units, 0),
                length,
            )
            node_labels.append(grown[0])
            node_ops.append(grown[1])
            node_inter.append(child_inter.reshape(units, -1))
            node_area.append(child_area.reshape(units, -1))
            node_valid.append(valid.reshape(units, -1))
        node_labels, node_ops = np.concatenate(node_labels, 1), np.concatenate(node_ops, 1)
        node_inter, node_area = np.concatenate(node_inter, 1), np.concatenate(node_area, 1)
        node_valid = np.concatenate(node_valid, 1)
        if level == length - 1:
            _last_step(
                problem, candidates, (pair_inter, pair_area),
                (node_labels, node_ops, node_inter, node_area, node_valid),
                best, left, evaluated, child_round, max_evaluations, counter,
            )  # fmt: skip
            break
        bound = reach_bound(candidates, node_inter, length - level)
        bound = np.where(node_valid, bound, -np.inf)
        order = np.argsort(-bound, axis=1, kind="stable")
        sorted_bound = np.take_along_axis(bound, order, 1)
        position = np.zeros(units, np.int64)
        done = np.zeros(units, bool)
        nodes = []
        while True:
            at = np.minimum(position, order.shape[1] - 1)
            exhausted = position >= order.shape[1]
            next_bound = np.where(exhausted, -np.inf, sorted_bound[all_units, at])
            capped = (
                np.zeros(units, bool) if max_expansions is None else expansions >= max_expansions
            )
            stopping = ~done & (exhausted | (next_bound <= best_iou + TOLERANCE) | capped)
            left[stopping] = np.maximum(left[stopping], next_bound[stopping])
            done |= stopping
            subset = np.nonzero(~done)[0]
            if not len(subset):
                break
            take = position[subset, None] + np.arange(round_size)[None]
            take = np.minimum(take, order.shape[1] - 1)
            picked = np.take_along_axis(order[subset], take, 1)
            active = (
                np.take_along_axis(sorted_bound[subset], take, 1)
                > best_iou[subset, None] + TOLERANCE
            )
            active &= (position[subset, None] + np.arange(round_size)[None]) < order.shape[1]
            if max_expansions is not None:
                active &= np.arange(round_size)[None] < (max_expansions - expansions[subset, None])
            labels_now = np.take_along_axis(node_labels[subset], picked[..., None], 1)
            ops_now = np.take_along_axis(node_ops[subset], picked[..., None], 1)
            t, both, inter, area = expand(problem, candidates, labels_now, ops_now, subset, counter)
            child_inter, child_area = children(
                Candidates(*(x[subset] for x in candidates)), t, both, inter, area
            )
            valid = _valid_children(labels_now, ops_now, np.zeros((len(subset), k), bool))
            valid &= active[:, :, None, None]
            consider(labels_now, ops_now, child_inter, child_area, valid, subset)
            expansions[subset] += active.sum(1)
            position[subset] += active.sum(1)
            # Units whose round met a node that may be pruned are finished next time around.
            if level + 1 < length:
                grown = (labels_now, ops_now, child_inter, child_area, valid)
                nodes.append(tuple(_scatter(x, subset, units) for x in grown))
    certified = left <= best_iou + TOLERANCE
    return SearchResult(
        _to_rows(candidates, best_labels), best_ops, best_iou, best_inter, best_area,
        certified, np.maximum(best_iou, left), expansions + evaluated,
    )  # fmt: skip


class _Best(NamedTuple):
    """The best formulas found so far (arrays updated in place)."""

    labels: np.ndarray
    ops: np.ndarray
    iou: np.ndarray
    inter: np.ndarray
    area: np.ndarray


def _last_step(problem, candidates, pairs, nodes, best, left, evaluated, round_size, cap, counter):
    """Scores the last step's children (F op x) of ``nodes`` one by one, best bound first,
    while their bound exceeds the unit's best IoU; updates ``best``, ``left`` (the largest
    bound not scored) and ``evaluated`` in place."""
    node_labels, node_ops, node_inter, node_area, node_valid = nodes
    units, count, length = node_labels.shape
    k = candidates.rows.shape[1]
    block = 8  # units per bound computation: (8, M, 4, K) values at a time
    queues = []
    for start in range(0, units, block):
        part = np.minimum(np.arange(start, start + block), units - 1)
        values = np.asarray(
            child_bounds(
                Candidates(*(x[part] for x in candidates)),
                pairs[0][part],
                pairs[1][part],
                node_labels[part],
                node_ops[part],
                node_inter[part],
                node_area[part],
                problem.pixels,
                node_valid[part],
            )
        )
        for row, unit in enumerate(part[: min(block, units - start)]):
            flat = values[row].ravel()
            (index,) = np.nonzero(flat > best.iou[unit] + TOLERANCE)
            order = np.argsort(-flat[index], kind="stable")
            queues.append((index[order], flat[index[order]]))
    longest = max(1, max(len(q[0]) for q in queues))
    index = np.zeros((units, longest), np.int64)
    bound = np.full((units, longest), -np.inf)
    for unit, (where, values) in enumerate(queues):
        index[unit, : len(where)], bound[unit, : len(where)] = where, values
    node, op_index, partner = np.unravel_index(index, (count, 4, k))
    position = np.zeros(units, np.int64)
    done = np.zeros(units, bool)
    all_units = np.arange(units)
    while True:
        at = np.minimum(position, longest - 1)
        next_bound = np.where(position < longest, bound[all_units, at], -np.inf)
        capped = np.zeros(units, bool) if cap is None else evaluated >= cap
        stopping = ~done & ((next_bound <= best.iou + TOLERANCE) | capped)
        left[stopping] = np.maximum(left[stopping], next_bound[stopping])
        done |= stopping
        subset = np.nonzero(~done)[0]
        if not len(subset):
            return
        take = np.minimum(position[subset, None] + np.arange(round_size)[None], longest - 1)
        active = np.take_along_axis(bound[subset], take, 1) > best.iou[subset, None] + TOLERANCE
        if cap is not None:
            active &= np.arange(round_size)[None] < (cap - evaluated[subset, None])
        parents = np.take_along_axis(node[subset], take, 1)
        parent_labels = np.take_along_axis(node_labels[subset], parents[..., None], 1)
        parent_ops = np.take_along_axis(node_ops[subset], parents[..., None], 1)
        operators = np.take_along_axis(op_index[subset], take, 1)
        partners = np.take_along_axis(partner[subset], take, 1)
        t, both = counter.partners(
            problem, candidates.rows, parent_labels, parent_ops, np.where(active, parents, -1),
            partners, subset,
        )  # fmt: skip
        # The child's counts from t and |F & x| (module docstring).
        inter_f = np.take_along_axis(node_inter[subset], parents, 1)
        area_f = np.take_along_axis(node_area[subset], parents, 1)
        a = np.take_along_axis(candidates.intersection[subset], partners, 1)
        s = np.take_along_axis(candidates.area[subset], partners, 1)
        inter = np.choose(operators, [t, inter_f + a - t, inter_f - t, a - t])
        area = np.choose(operators, [both, area_f + s - both, area_f - both, s - both])
        labels, ops = _append(parent_labels, parent_ops, operators, partners, length)
        scores = np.where(active, iou_of(inter, area, candidates.unit_area[subset, None]), -1.0)
        top = scores.argmax(1)
        rows = np.arange(len(subset))
        better = scores[rows, top] > best.iou[subset]
        winners = subset[better]
        best.labels[winners] = labels[rows, top][better]
        best.ops[winners] = ops[rows, top][better]
        best.iou[winners] = scores[rows, top][better]
        best.inter[winners] = inter[rows, top][better]
        best.area[winners] = area[rows, top][better]
        evaluated[subset] += active.sum(1)
        position[subset] += active.sum(1)


def _scatter(values: np.ndarray, subset: np.ndarray, units: int) -> np.ndarray:
    """Rows of ``subset`` placed into an array of all units (others: -1 / False)."""
    fill = False if values.dtype == bool else -1
    out = np.full((units, *values.shape[1:]), fill, values.dtype)
    out[subset] = values
    return out


class Explanations(NamedTuple):
    """A layer's formulas, ready to write.

    Attributes:
      layer: the layer's name.
      label_names: the dataset's label names.
      thresholds: (U,) float32 the units' thresholds.
      problem, candidates: the packed masks and each unit's candidates.
      result: the reported search (exact when run, else beam).
      beam: the beam search's result.
      exact: the exact search's result, or None.
      seconds: {"masks", "beam", "exact"} wall times.
    """

    layer: str
    label_names: tuple[str, ...]
    thresholds: np.ndarray
    problem: Problem
    candidates: Candidates
    result: SearchResult
    beam: SearchResult
    exact: SearchResult | None
    seconds: dict


def build_problem(
    read, num_images: int, layer: str, thresholds, labels, label_size, num_labels: int,
    batch_size: int = 64, progress: bool = False,
) -> Problem:  # fmt: skip
    """Packs the units' masks (the dissection's: ``formulas.unit_masks``) and every non-empty
    label's concept mask, image batch by image batch.

    Args:
      read: ``read(start, stop)`` gives {layer: (B, h, w, U)}.
      num_images: N.
      layer: the layer read.
      thresholds: (U,) the units' thresholds (``compute_thresholds``).
      labels: the dataset's ``LabelArrays``.
      label_size: (sh, sw).
      num_labels: L (labels 1 .. L - 1 are concepts).
      batch_size: images per batch (also the images per device call).
    """
    from jaxdissect.compositional.formula_cpu import pack_unit_masks
    from jaxdissect.compositional.formulas import concept_masks, pack_bits
    from jaxdissect.progress import progress_bar

    wanted = np.arange(1, num_labels)
    unit_parts, concept_parts = [], []
    for start in progress_bar(
        range(0, num_images, batch_size), desc="formula masks", unit="batch", disable=not progress
    ):
        stop = min(start + batch_size, num_images)
        maps = np.asarray(read(start, stop)[layer], np.float32)
        unit_parts.append(pack_unit_masks(maps, thresholds, label_size))
        planes = labels.label_planes(start, stop)
        image_labels = np.asarray(labels.image_labels[start:stop])
        concept_parts.append(pack_bits(concept_masks(planes, image_labels, wanted)))
    pad = (-num_images) % batch_size
    unit_bits = np.concatenate(unit_parts, axis=1)
    concept_bits = np.concatenate(concept_parts, axis=1)
    unit_bits = np.pad(unit_bits, ((0, 0), (0, pad), (0, 0)))
    concept_bits = np.pad(concept_bits, ((0, 0), (0, pad), (0, 0)))
    words = unit_bits.shape[2]
    present = concept_bits.reshape(len(wanted), -1).any(1)
    return Problem(
        unit_bits.reshape(unit_bits.shape[0], -1),
        concept_bits[present].reshape(int(present.sum()), -1),
        wanted[present],
        num_images * int(np.prod(label_size)),
        min(batch_size, num_images) * words,
    )


# Bytes per formula the exact search holds at its widest level (labels, operators, counts,
# bounds, their sort order and the copies made while concatenating): measured, 60 images x
# 8 units x 40 labels at length 4 peaked at 3.5 GB for 8.2 million formulas.
EXACT_NODE_BYTES = 400


def exact_search_bytes(units: int, labels_per_unit: int, length: int) -> int:
    """An upper bound on the exact search's memory: at its widest level (the last but
    one), each unit may hold every formula of length - 1 over its candidates (k of them,
    each extended by 4 operators times k partners per level)."""
    if length < 3:
        return units * labels_per_unit * 4 * labels_per_unit * EXACT_NODE_BYTES
    k = labels_per_unit
    return units * k * (4 * k) ** (length - 2) * EXACT_NODE_BYTES


def memory_budget() -> int:
    """Bytes this process may allocate: the least of the memory available now
    (/proc/meminfo's MemAvailable), the cgroup's limit and the address-space and data
    rlimits, whichever are known."""
    import resource

    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limits.append(int(text))
    except OSError:
        pass
    for which in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    if not limits:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(limits)


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
      out: where to write formulas.csv, formulas.json and formulas.html (None: nowhere).
      layer: the layer (required for a model; a features file's name otherwise).
      weights: the model's weights file (for its identity).
      length: the longest formula (N); beam: the beam width; exact: also run the exact
        search and report its formulas; labels_per_unit: candidates per unit.
      labels, images, cache: the decoded labels and images, when the caller has them.
      report: write formulas.html.
      progress: progress bars.
    """
    import time

    from jaxdissect.config import DissectConfig
    from jaxdissect.data.cache import load_image_array, load_label_arrays
    from jaxdissect.errors import DissectError
    from jaxdissect.models.features import FeatureModel
    from jaxdissect.passes import compute_thresholds
    from jaxdissect.pipeline import open_inputs

    config = config or DissectConfig()
    if length < 1 or beam < 1 or labels_per_unit < 1:
        raise DissectError(
            "`length`, `beam` and `labels_per_unit` must be >= 1",
            arguments=("length", "beam", "labels_per_unit"),
        )
    if isinstance(source, FeatureModel) and not layer:
        raise DissectError(
            f"name the layer of model {source.name!r} (`layer`)", arguments=("layer",)
        )
    dataset, source, images = open_inputs(
        dataset, source, [layer] if layer else None, config.batch_size, weights, images, cache,
        progress,
    )  # fmt: skip
    layer = layer or next(iter(source.shapes))
    if layer not in source.shapes:
        raise DissectError(f"layer {layer!r} is not among {sorted(source.shapes)}")
    if labels is None:
        labels = load_label_arrays(dataset, cache, progress)
    shapes = {layer: source.shapes[layer]}
    if exact and length >= 3:  # refused before any work: its levels grow as (4k)^length
        units, k = shapes[layer][-1], min(labels_per_unit, dataset.num_labels)
        needed, budget = exact_search_bytes(units, k, length), memory_budget()
        if needed > budget:
            raise DissectError(
                f"--exact --length {length} over {units} units with {k} labels per unit may "
                f"need {needed / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB this "
                "process may use; lower --length or --labels-per-unit"
            )
    seconds = {}
    started = time.perf_counter()
    thresholds = compute_thresholds(source.read, source.num_images, shapes, config, progress)[
        layer
    ].thresholds
    problem = build_problem(
        source.read, source.num_images, layer, thresholds, labels, dataset.label_size,
        dataset.num_labels, config.batch_size, progress,
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
    explanations = Explanations(
        layer, dataset.label_names, np.asarray(thresholds), problem, candidates,
        exact_result if exact else beam_result, beam_result, exact_result, seconds,
    )  # fmt: skip
    if out is not None:
        from jaxdissect.report.formulas import write_formulas

        if report and images is None:
            images = load_image_array(dataset, cache, progress)
        write_formulas(out, explanations, dataset, images if report else None, source.provenance)
    return explanations
