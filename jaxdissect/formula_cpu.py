"""The formula counts on CPU cores: compiled loops over packed words instead of XLA.

XLA on CPU gathers each unit's candidate masks and materialises every (formula, concept)
AND before counting it. These loops walk the words in tiles small enough for the caches
(a tile of every parent formula's mask and of each candidate's mask), AND and count them
in registers, and spread units over the cores (each core owns whole output rows, so no
locks). The counts are integers: they equal the XLA kernels' exactly.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from jaxdissect.formulas import AND, ANDNOT, NOP, NOTAND, OR

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
    """(U, C) int64 |u & c| of every unit and concept."""
    units, words = unit_bits.shape
    count = concept_bits.shape[0]
    out = np.zeros((units, count), np.int64)
    for u in numba.prange(units):
        unit = unit_bits[u]
        for start in range(0, words, TILE):
            stop = min(start + TILE, words)
            for c in range(count):
                concept = concept_bits[c]
                total = 0
                for w in range(start, stop):
                    total += _popcount(unit[w] & concept[w])
                out[u, c] += total
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
        for start in range(0, words, TILE):
            count = min(TILE, words - start)
            for b in range(batch):
                mask, hit = masks[b], hits[b]
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
            for x in range(k):
                concept = concept_bits[candidate_rows[x]][start : start + count]
                for b in range(batch):
                    mask, hit = masks[b], hits[b]
                    inside = 0
                    total = 0
                    for w in range(count):
                        inside += _popcount(hit[w] & concept[w])
                        total += _popcount(mask[w] & concept[w])
                    t[i, b, x] += inside
                    both[i, b, x] += total
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
