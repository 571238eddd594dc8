"""The exact search: the best formula of each unit with a certificate, by branch and bound.

Every single concept is expanded (which yields the pair counts |u & x & y| and |x & y| of
all candidates), then longer formulas best-first while their upper bound exceeds the best
IoU found: ``reach_bound`` before the last step, ``child_bounds`` at it, where the children
are scored one by one (``counter.partners``). A unit is *certified* when every formula left
unexpanded has a bound at or below the best IoU; ``bound`` is then that IoU (gap 0), else
the largest bound left. The children's counts follow from t = |u & F & x| and |F & x| as
``search`` describes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxdissect.compositional.counting import Counter, Problem, select_counter
from jaxdissect.compositional.formulas import append_every_step, append_step, empty_programs
from jaxdissect.compositional.search import (
    TOLERANCE,
    Candidates,
    SearchResult,
    children,
    expand,
    iou_of,
    to_candidates,
    to_rows,
    valid_children,
)

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
    best = _start(candidates, length, incumbent)
    expansions = np.zeros(units, np.int64)
    evaluated = np.zeros(units, np.int64)
    left = np.full(units, -np.inf)  # the largest bound of what was not expanded
    if length == 1:
        return SearchResult(
            to_rows(candidates, best.labels), best.ops, best.iou, best.inter, best.area,
            np.ones(units, bool), best.iou.copy(), expansions,
        )  # fmt: skip
    pairs = counter.pairs(problem, candidates.rows, np.arange(units))
    nodes = _expand_singles(candidates, pairs, best, round_size, length)
    expansions += k
    for level in range(2, length):
        # This level's formulas: the children of the last level's expansions.
        level_nodes = _grow(nodes, units, k, length)
        if level == length - 1:
            _last_step(
                problem, candidates, pairs, level_nodes, best, left, evaluated, child_round,
                max_evaluations, counter,
            )  # fmt: skip
            break
        nodes = _expand_level(
            problem, candidates, level_nodes, best, left, expansions, round_size,
            max_expansions, counter, length - level,
        )  # fmt: skip
    certified = left <= best.iou + TOLERANCE
    return SearchResult(
        to_rows(candidates, best.labels), best.ops, best.iou, best.inter, best.area,
        certified, np.maximum(best.iou, left), expansions + evaluated,
    )  # fmt: skip


class _Best(NamedTuple):
    """The best formulas found so far (arrays updated in place), of at most ``length``."""

    labels: np.ndarray
    ops: np.ndarray
    iou: np.ndarray
    inter: np.ndarray
    area: np.ndarray
    length: int


def _start(candidates: Candidates, length: int, incumbent: SearchResult | None) -> _Best:
    """The best formulas before any search: each unit's best single concept, or the
    incumbent's formula where it is better."""
    units = candidates.rows.shape[0]
    labels, ops = empty_programs(units, 1, length)
    labels, ops = labels[:, 0], ops[:, 0]
    labels[:, 0] = 0
    single_iou = iou_of(candidates.intersection, candidates.area, candidates.unit_area[:, None])
    best = _Best(
        labels, ops, single_iou[:, 0].copy(), candidates.intersection[:, 0].copy(),
        candidates.area[:, 0].copy(), length,
    )  # fmt: skip
    if incumbent is not None:
        better = incumbent.iou > best.iou
        best.labels[better] = to_candidates(candidates, incumbent.labels)[better]
        best.ops[better] = incumbent.ops[better]
        best.iou[better] = incumbent.iou[better]
        best.inter[better] = incumbent.intersection[better]
        best.area[better] = incumbent.area[better]
    return best


def _consider(best: _Best, unit_area, labels, ops, child_inter, child_area, valid, subset):
    """Updates the best formulas of ``subset`` with their valid children."""
    child_iou = np.where(
        valid, iou_of(child_inter, child_area, unit_area[subset, None, None, None]), -1.0
    )
    flat = child_iou.reshape(len(subset), -1)
    top = flat.argmax(1)
    better = flat[np.arange(len(subset)), top] > best.iou[subset]
    parent, op_index, partner = np.unravel_index(top, child_iou.shape[1:])
    grown_labels, grown_ops = append_step(
        labels[np.arange(len(subset)), parent][:, None],
        ops[np.arange(len(subset)), parent][:, None],
        op_index[:, None],
        partner[:, None],
        best.length,
    )
    winners = subset[better]
    best.labels[winners] = grown_labels[better, 0]
    best.ops[winners] = grown_ops[better, 0]
    best.iou[winners] = flat[better, top[better]]
    best.inter[winners] = child_inter.reshape(len(subset), -1)[better, top[better]]
    best.area[winners] = child_area.reshape(len(subset), -1)[better, top[better]]


def _expand_singles(candidates, pairs, best: _Best, round_size: int, length: int) -> list:
    """Level 1: every single concept expanded, in groups, from the pair counts; returns
    the groups' (labels, ops, child I, child |M|, valid) for the next level."""
    units, k = candidates.rows.shape
    labels, ops = empty_programs(units, k, length)
    labels[:, :, 0] = np.arange(k)
    pair_inter, pair_area = pairs
    singles = np.ones((units, k), bool)
    all_units = np.arange(units)
    nodes = []
    for start in range(0, k, round_size):
        group = slice(start, start + round_size)
        # Expanding x: t = |u & x & y|, |x & y| for every y, and I_F = a_x, |F| = |x|.
        t, both = pair_inter[:, group], pair_area[:, group]
        inter, area = candidates.intersection[:, group], candidates.area[:, group]
        child_inter, child_area = children(candidates, t, both, inter, area)
        valid = valid_children(labels[:, group], ops[:, group], singles)
        _consider(
            best, candidates.unit_area, labels[:, group], ops[:, group], child_inter,
            child_area, valid, all_units,
        )  # fmt: skip
        nodes.append((labels[:, group], ops[:, group], child_inter, child_area, valid))
    return nodes


def _grow(nodes: list, units: int, k: int, length: int) -> tuple:
    """The children of expanded formulas as one level's formulas: (labels, ops, I, |M|,
    valid), (U, M, ...) each."""
    grown = [[], [], [], [], []]
    for parent_labels, parent_ops, child_inter, child_area, valid in nodes:
        labels, ops = append_every_step(parent_labels, parent_ops, k, length)
        grown[0].append(labels)
        grown[1].append(ops)
        for part, value in zip(grown[2:], (child_inter, child_area, valid), strict=True):
            part.append(value.reshape(units, -1))
    return tuple(np.concatenate(part, 1) for part in grown)


def _expand_level(
    problem, candidates, level_nodes, best: _Best, left, expansions, round_size, cap, counter,
    steps,
) -> list:  # fmt: skip
    """Expands one level's formulas best-first, ``round_size`` per unit and round, while
    their ``reach_bound`` (``steps`` more steps) exceeds the unit's best IoU (and below
    ``cap`` expansions); updates ``best``, ``left`` and ``expansions`` in place and returns
    the expanded formulas' children for the next level."""
    node_labels, node_ops, node_inter, _, node_valid = level_nodes
    units, k = candidates.rows.shape
    all_units = np.arange(units)
    bound = np.where(node_valid, reach_bound(candidates, node_inter, steps), -np.inf)
    order = np.argsort(-bound, axis=1, kind="stable")
    sorted_bound = np.take_along_axis(bound, order, 1)
    position = np.zeros(units, np.int64)
    done = np.zeros(units, bool)
    nodes = []
    while True:
        at = np.minimum(position, order.shape[1] - 1)
        exhausted = position >= order.shape[1]
        next_bound = np.where(exhausted, -np.inf, sorted_bound[all_units, at])
        capped = np.zeros(units, bool) if cap is None else expansions >= cap
        stopping = ~done & (exhausted | (next_bound <= best.iou + TOLERANCE) | capped)
        left[stopping] = np.maximum(left[stopping], next_bound[stopping])
        done |= stopping
        subset = np.nonzero(~done)[0]
        if not len(subset):
            return nodes
        take = np.minimum(position[subset, None] + np.arange(round_size)[None], order.shape[1] - 1)
        picked = np.take_along_axis(order[subset], take, 1)
        active = (
            np.take_along_axis(sorted_bound[subset], take, 1) > best.iou[subset, None] + TOLERANCE
        )
        active &= (position[subset, None] + np.arange(round_size)[None]) < order.shape[1]
        if cap is not None:
            active &= np.arange(round_size)[None] < (cap - expansions[subset, None])
        labels_now = np.take_along_axis(node_labels[subset], picked[..., None], 1)
        ops_now = np.take_along_axis(node_ops[subset], picked[..., None], 1)
        t, both, inter, area = expand(problem, candidates, labels_now, ops_now, subset, counter)
        child_inter, child_area = children(
            Candidates(*(x[subset] for x in candidates)), t, both, inter, area
        )
        valid = valid_children(labels_now, ops_now, np.zeros((len(subset), k), bool))
        valid &= active[:, :, None, None]
        _consider(
            best, candidates.unit_area, labels_now, ops_now, child_inter, child_area, valid,
            subset,
        )  # fmt: skip
        expansions[subset] += active.sum(1)
        position[subset] += active.sum(1)
        # Units whose round met a node that may be pruned are finished next time around.
        grown = (labels_now, ops_now, child_inter, child_area, valid)
        nodes.append(tuple(_scatter(x, subset, units) for x in grown))


def _child_queues(problem, candidates, pairs, nodes, best: _Best):
    """Per unit, the last step's children whose ``child_bounds`` exceed its best IoU, best
    bound first: (flat child index (U, Q) into (M, 4, K), bound (U, Q); -inf past a unit's
    queue)."""
    node_labels, node_ops, node_inter, node_area, node_valid = nodes
    units = node_labels.shape[0]
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
    return index, bound


def _last_step(problem, candidates, pairs, nodes, best, left, evaluated, round_size, cap, counter):
    """Scores the last step's children (F op x) of ``nodes`` one by one, best bound first,
    while their bound exceeds the unit's best IoU; updates ``best``, ``left`` (the largest
    bound not scored) and ``evaluated`` in place."""
    node_labels, node_ops, node_inter, node_area, _ = nodes
    units, count, length = node_labels.shape
    k = candidates.rows.shape[1]
    index, bound = _child_queues(problem, candidates, pairs, nodes, best)
    longest = index.shape[1]
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
        # The child's counts from t and |F & x| (``search``'s docstring).
        inter_f = np.take_along_axis(node_inter[subset], parents, 1)
        area_f = np.take_along_axis(node_area[subset], parents, 1)
        a = np.take_along_axis(candidates.intersection[subset], partners, 1)
        s = np.take_along_axis(candidates.area[subset], partners, 1)
        inter = np.choose(operators, [t, inter_f + a - t, inter_f - t, a - t])
        area = np.choose(operators, [both, area_f + s - both, area_f - both, s - both])
        labels, ops = append_step(parent_labels, parent_ops, operators, partners, length)
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
