"""The formula counts on CPU cores: compiled loops over packed words instead of XLA.

XLA on CPU gathers each unit's candidate masks and materialises every (formula, concept)
AND before counting it. These loops walk the words in tiles small enough for the caches
(a tile of every parent formula's mask and of each candidate's mask), AND and count them
in registers, and spread units over the cores (each core owns whole output rows, so no
locks). The exact search's pair and partner counts walk only the non-zero words of the
unit or of the formula instead, and count |x & y| once per pair of concepts. The counts
are integers: they equal the XLA kernels' exactly.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from jaxdissect.compositional.formulas import AND, ANDNOT, NOP, NOTAND, OR

TILE = 512  # words of one tile (2 KiB): the parents' and candidates' tiles stay in L1/L2


@intrinsic
def _popcount(typingctx, word):  # pragma: no cover - compiled
    """The set bits of a uint32 (LLVM's ctpop: one instruction where the CPU has one)."""

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint32(types.uint32), codegen


@numba.njit(inline="always")
def _program_tile(concept_bits, candidate_rows, labels, ops, start, count, out):  # pragma: no cover
    """``out[:count]``: words [start, start + count) of a program's mask (its labels index
    ``candidate_rows``; it ends at the first NOP or negative label)."""
    first = concept_bits[candidate_rows[labels[0]]]
    for w in range(count):
        out[w] = first[start + w]
    for step in range(ops.shape[0]):
        op = ops[step]
        label = labels[step + 1]
        if op == NOP or label < 0:
            break
        x = concept_bits[candidate_rows[label]]
        if op == AND:
            for w in range(count):
                out[w] &= x[start + w]
        elif op == OR:
            for w in range(count):
                out[w] |= x[start + w]
        elif op == ANDNOT:
            for w in range(count):
                out[w] &= ~x[start + w]
        elif op == NOTAND:
            for w in range(count):
                out[w] = x[start + w] & ~out[w]


@numba.njit(parallel=True, cache=True)
def intersection_counts(unit_bits, concept_bits):  # pragma: no cover - compiled
    """(U, C) int64 |u & c| of every unit and concept, over the unit's non-zero words only
    (a unit's mask, above a high quantile, is mostly empty)."""
    units, count = unit_bits.shape[0], concept_bits.shape[0]
    out = np.zeros((units, count), np.int64)
    for u in numba.prange(units):
        unit = unit_bits[u]
        where = np.nonzero(unit)[0]
        values = unit[where]
        for c in range(count):
            concept = concept_bits[c]
            total = 0
            for j in range(where.shape[0]):
                total += _popcount(values[j] & concept[where[j]])
            out[u, c] = total
    return out


@numba.njit(parallel=True, cache=True)
def extension_counts(unit_bits, concept_bits, rows, labels, ops, units):  # pragma: no cover
    """The counts of ``formulas.extension_counts`` over all words, for units ``units``
    (``rows[units[i]]`` are unit i's candidates): t (U', B, K), |F & x| (U', B, K),
    I_F (U', B), |F| (U', B), int64."""
    selected, batch = labels.shape[0], labels.shape[1]
    k = rows.shape[1]
    words = unit_bits.shape[1]
    t = np.zeros((selected, batch, k), np.int64)
    both = np.zeros((selected, batch, k), np.int64)
    inter = np.zeros((selected, batch), np.int64)
    area = np.zeros((selected, batch), np.int64)
    for i in numba.prange(selected):
        unit = unit_bits[units[i]]
        candidate_rows = rows[units[i]]
        masks = np.empty((batch, TILE), np.uint32)
        hits = np.empty((batch, TILE), np.uint32)
        live = np.empty(batch, np.int64)  # the parents whose tile is not empty
        for start in range(0, words, TILE):
            count = min(TILE, words - start)
            alive = 0
            for b in range(batch):
                mask, hit = masks[alive], hits[alive]
                _program_tile(
                    concept_bits, candidate_rows, labels[i, b], ops[i, b], start, count, mask
                )
                inside = 0
                total = 0
                for w in range(count):
                    hit[w] = mask[w] & unit[start + w]
                    inside += _popcount(hit[w])
                    total += _popcount(mask[w])
                inter[i, b] += inside
                area[i, b] += total
                if total > 0:
                    live[alive] = b
                    alive += 1
            for x in range(k):
                concept = concept_bits[candidate_rows[x]][start : start + count]
                for j in range(alive):
                    mask, hit = masks[j], hits[j]
                    inside = 0
                    total = 0
                    for w in range(count):
                        inside += _popcount(hit[w] & concept[w])
                        total += _popcount(mask[w] & concept[w])
                    t[i, live[j], x] += inside
                    both[i, live[j], x] += total
    return t, both, inter, area


@numba.njit(parallel=True, cache=True)
def formula_counts(unit_bits, concept_bits, rows, labels, ops, units):  # pragma: no cover
    """(|u & F|, |F|) (U', M) int64 of programs (U', M, n) over all words, for ``units``."""
    selected, batch = labels.shape[0], labels.shape[1]
    words = unit_bits.shape[1]
    inter = np.zeros((selected, batch), np.int64)
    area = np.zeros((selected, batch), np.int64)
    for i in numba.prange(selected):
        unit = unit_bits[units[i]]
        candidate_rows = rows[units[i]]
        mask = np.empty(TILE, np.uint32)
        for start in range(0, words, TILE):
            count = min(TILE, words - start)
            for b in range(batch):
                _program_tile(
                    concept_bits, candidate_rows, labels[i, b], ops[i, b], start, count, mask
                )
                inside = 0
                total = 0
                for w in range(count):
                    inside += _popcount(mask[w] & unit[start + w])
                    total += _popcount(mask[w])
                inter[i, b] += inside
                area[i, b] += total
    return inter, area


@numba.njit(parallel=True, cache=True)
def unit_mask_bits(
    maps, thresholds, rows, row_weights, columns, column_weights, words
):  # pragma: no cover
    """(U, B, words) uint32 packed masks ``formulas.pack_bits(formulas.unit_masks(...))``:
    (B, h, w, U) maps resized with ``upsample.resize_maps``'s arithmetic (same taps, same
    float64 sums in the same order, rounded to float32 after each pass) and compared with
    each unit's threshold (strict >). A map whose maximum is at most the threshold gives no
    bit (bilinear weights are >= 0 and sum to 1, so no upsampled value exceeds the maximum)
    and is skipped: most are, for a high quantile."""
    batch, height, _, units = maps.shape
    out_h, out_w = rows.shape[0], columns.shape[0]
    out = np.zeros((units, batch, words), np.uint32)
    for item in numba.prange(batch * units):
        i, u = item // units, item % units
        threshold = thresholds[u]
        if maps[i, :, :, u].max() <= threshold:
            continue
        across = np.empty((height, out_w), np.float32)
        for y in range(height):
            for x in range(out_w):
                total = 0.0
                for tap in range(columns.shape[1]):
                    total += np.float64(maps[i, y, columns[x, tap], u]) * column_weights[x, tap]
                across[y, x] = np.float32(total)
        for y in range(out_h):
            for x in range(out_w):
                total = 0.0
                for tap in range(rows.shape[1]):
                    total += np.float64(across[rows[y, tap], x]) * row_weights[y, tap]
                if np.float32(total) > threshold:
                    pixel = y * out_w + x
                    out[u, i, pixel >> 5] |= np.uint32(1) << np.uint32(pixel & 31)
    return out


def pack_unit_masks(maps: np.ndarray, thresholds: np.ndarray, label_size) -> np.ndarray:
    """(U, B, ceil(sh * sw / 32)) uint32: ``pack_bits(unit_masks(maps, thresholds,
    label_size))`` without the float64 maps and boolean masks in memory."""
    from jaxdissect.stats.upsample import _axis_taps  # the taps resize_maps sums

    out_h, out_w = label_size
    rows, row_weights = _axis_taps(out_h, maps.shape[1])
    columns, column_weights = _axis_taps(out_w, maps.shape[2])
    return unit_mask_bits(
        np.ascontiguousarray(maps, np.float32), np.asarray(thresholds, np.float32), rows,
        row_weights, columns, column_weights, -(-out_h * out_w // 32),
    )  # fmt: skip


@numba.njit(inline="always")
def _interval(pair, universe, labels, ops, x):  # pragma: no cover - compiled
    """[lo, hi] of |F & x| within a universe, from the pair counts of F's concepts (see
    ``exact.child_bounds``)."""
    lo = pair[max(labels[0], 0), x]
    hi = lo
    whole = universe[x]
    for step in range(ops.shape[0]):
        p = pair[max(labels[step + 1], 0), x]
        op = ops[step]
        if op == AND:
            lo, hi = max(0, lo + p - whole), min(hi, p)
        elif op == OR:
            lo, hi = max(lo, p), min(whole, hi + p)
        elif op == ANDNOT:
            lo, hi = max(0, lo - p), min(hi, whole - p)
        elif op == NOTAND:
            lo, hi = max(0, p - hi), min(p, whole - lo)
    return lo, hi


@numba.njit(parallel=True, cache=True)
def child_bounds(
    a, s, unit_area, pair_inter, pair_false, labels, ops, inter, area, valid, pixels, rounding
):  # pragma: no cover - compiled
    """(U, M, 4, K) float32 ``exact.child_bounds``; ``pair_false`` = |y & x - u|;
    -inf for the children of formulas not ``valid`` (U, M), which are not computed."""
    units, count, length = labels.shape
    k = a.shape[1]
    out = np.empty((units, count, 4, k), np.float32)
    false_x = s - a
    for item in numba.prange(units * count):
        u, m = item // count, item % count
        if not valid[u, m]:
            out[u, m] = -np.inf
            continue
        n_u = unit_area[u]
        inter_f = inter[u, m]
        fp_f = area[u, m] - inter_f
        for x in range(k):
            used = False
            for position in range(length):
                used |= labels[u, m, position] == x
            if used:
                out[u, m, :, x] = -np.inf
                continue
            t_lo, t_hi = _interval(pair_inter[u], a[u], labels[u, m], ops[u, m], x)
            g_lo, g_hi = _interval(pair_false[u], false_x[u], labels[u, m], ops[u, m], x)
            a_x, fp_x = a[u, x], false_x[u, x]
            t_lo = max(t_lo, max(0, inter_f + a_x - n_u))
            t_hi = min(t_hi, min(inter_f, a_x))
            g_lo = max(g_lo, max(0, fp_f + fp_x - (pixels - n_u)))
            g_hi = min(g_hi, min(fp_f, fp_x))
            for op in range(4):
                if op == 0:
                    best, least = t_hi, g_lo
                elif op == 1:
                    best, least = inter_f + a_x - t_lo, fp_f + fp_x - g_hi
                elif op == 2:
                    best, least = inter_f - t_lo, fp_f - g_hi
                else:
                    best, least = a_x - t_lo, fp_x - g_hi
                union = np.float32(n_u + least)
                if union > 0:
                    out[u, m, op, x] = np.float32(best) / max(union, np.float32(1)) * rounding
                else:
                    out[u, m, op, x] = 0.0
    return out


@numba.njit(parallel=True, cache=True)
def partner_counts(
    unit_bits, concept_bits, rows, labels, ops, parents, partners, units
):  # pragma: no cover
    """(|u & F & x|, |F & x|) (U', R) int64 of R (program F, concept x) pairs per unit:
    F's program ``labels[i, j]``, ``ops[i, j]``, x = ``partners[i, j]`` (over the unit's
    candidates). Pairs with the same ``parents[i, j]`` share F: its mask is built once for
    them, with the list of its non-zero words and of those of u & F, and each pair is
    counted over those words only; pairs with a negative parent are skipped (counts 0)."""
    selected, batch = partners.shape
    words = unit_bits.shape[1]
    t = np.zeros((selected, batch), np.int64)
    both = np.zeros((selected, batch), np.int64)
    for i in numba.prange(selected):
        unit = unit_bits[units[i]]
        candidate_rows = rows[units[i]]
        order = np.argsort(parents[i], kind="mergesort")
        mask = np.empty(words, np.uint32)
        where = np.empty(words, np.int64)  # F's non-zero words
        hit_where = np.empty(words, np.int64)  # u & F's
        hit = np.empty(words, np.uint32)
        filled = hit_filled = 0
        previous = -1
        for j in order:
            if parents[i, j] < 0:
                continue
            if parents[i, j] != previous:
                previous = parents[i, j]
                _program_tile(concept_bits, candidate_rows, labels[i, j], ops[i, j], 0, words, mask)
                filled = hit_filled = 0
                for w in range(words):
                    if mask[w] != 0:
                        where[filled] = w
                        filled += 1
                        value = mask[w] & unit[w]
                        if value != 0:
                            hit_where[hit_filled] = w
                            hit[hit_filled] = value
                            hit_filled += 1
            concept = concept_bits[candidate_rows[partners[i, j]]]
            total = 0
            if filled * 4 > words:
                for w in range(words):
                    total += _popcount(mask[w] & concept[w])
            else:
                for n in range(filled):
                    total += _popcount(mask[where[n]] & concept[where[n]])
            both[i, j] = total
            inside = 0
            for n in range(hit_filled):
                inside += _popcount(hit[n] & concept[hit_where[n]])
            t[i, j] = inside
    return t, both


@numba.njit(parallel=True, cache=True)
def concept_pair_areas(concept_bits, concepts):  # pragma: no cover - compiled
    """(n, n) int64 |x & y| of every pair of the concept rows ``concepts``, each pair counted
    once over the non-zero words of x."""
    n = concepts.shape[0]
    out = np.zeros((n, n), np.int64)
    for a in numba.prange(n):
        first = concept_bits[concepts[a]]
        where = np.nonzero(first)[0]
        values = first[where]
        for b in range(a, n):
            second = concept_bits[concepts[b]]
            total = 0
            for j in range(where.shape[0]):
                total += _popcount(values[j] & second[where[j]])
            out[a, b] = total
            out[b, a] = total
    return out


@numba.njit(parallel=True, cache=True)
def _unit_pair_counts(unit_bits, concept_bits, rows, units):  # pragma: no cover - compiled
    """(U', K, K) int64 |u & x & y| of every pair of the candidates of ``units``, over u's
    non-zero words only (a unit's mask, above a high quantile, is mostly empty)."""
    selected, k = units.shape[0], rows.shape[1]
    t = np.zeros((selected, k, k), np.int64)
    for i in numba.prange(selected):
        unit = unit_bits[units[i]]
        candidate_rows = rows[units[i]]
        where = np.nonzero(unit)[0]
        hit = np.empty(where.shape[0], np.uint32)
        for x in range(k):
            first = concept_bits[candidate_rows[x]]
            for j in range(where.shape[0]):
                hit[j] = unit[where[j]] & first[where[j]]
            for y in range(x, k):
                second = concept_bits[candidate_rows[y]]
                inside = 0
                for j in range(where.shape[0]):
                    inside += _popcount(hit[j] & second[where[j]])
                t[i, x, y] = inside
                t[i, y, x] = inside
    return t


def pair_counts(unit_bits, concept_bits, rows, units):
    """(|u & x & y|, |x & y|) (U', K, K) int64 of every pair of the candidates of
    ``units``. |x & y| does not depend on the unit: each pair of the concepts these units
    use is counted once (``concept_pair_areas``), not once per unit."""
    candidate_rows = rows[units]
    concepts, index = np.unique(candidate_rows, return_inverse=True)
    areas = concept_pair_areas(concept_bits, concepts)
    index = index.reshape(candidate_rows.shape)
    both = areas[index[:, :, None], index[:, None, :]]
    return _unit_pair_counts(unit_bits, concept_bits, rows, units), both
