"""Logical formulas of concepts, their text, and their masks as packed bits.

A formula is a concept, or ``(F AND G)``, ``(F OR G)``, ``(F AND NOT G)`` of formulas; its
length is the number of concepts in it. The searches (``search``, ``exact``) build formulas one
concept at a time, as a *program*: ``labels[0]`` and then, for each further concept x, one
of the operators

    AND     (F AND x)        OR      (F OR x)
    ANDNOT  (F AND NOT x)    NOTAND  (x AND NOT F)

(``NOP`` pads shorter programs). Up to length 3 these programs reach every formula of the
grammar (up to commutativity: ``(x AND (y OR z)) = ((y OR z) AND x)``); from length 4 on
they miss formulas such as ``((a OR b) AND (c OR d))``.

Masks are packed 32 pixels to a uint32 word, image by image (each image's pixels padded
with zero bits to whole words): a mask of N images of P pixels is ``N * ceil(P / 32)``
words. Counting a candidate is then AND/OR/ANDNOT of words and ``population_count``.
IoU(unit, F) = |M_u & M_F| / |M_u | M_F| over all pixels of all images.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, UInt32

from jaxdissect.errors import DissectError

AND, OR, ANDNOT, NOTAND, NOP = 0, 1, 2, 3, 4
OPERATOR_WORDS = {AND: "AND", OR: "OR", ANDNOT: "AND NOT", NOTAND: "AND NOT"}
OPERATORS = (AND, OR, ANDNOT, NOTAND)  # a child's operator index, as the searches number it

# A formula tree: a label number (int), or (word, left, right) with word "AND", "OR" or
# "AND NOT".
Formula = int | tuple


def program_tree(labels, ops) -> Formula:
    """The tree of a program (label numbers and operator codes); it ends at the first
    negative label or NOP."""
    tree: Formula = int(labels[0])
    for label, op in zip(labels[1:], ops, strict=False):
        if op == NOP or label < 0:
            break
        if op == NOTAND:
            tree = ("AND NOT", int(label), tree)
        else:
            tree = (OPERATOR_WORDS[int(op)], tree, int(label))
    return tree


def append_step(labels, ops, op_index, partner, length):
    """Programs of chosen children: parents' programs with (op, partner) added."""
    position = (labels >= 0).sum(-1)
    new_labels, new_ops = labels.copy(), ops.copy()
    index = np.indices(position.shape)
    new_labels[(*index, position)] = partner
    new_ops[(*index, position - 1)] = np.asarray(OPERATORS)[op_index]
    return new_labels, new_ops


def append_every_step(labels, ops, k, length):
    """Programs of every child: each of the (U, B) parents with each of the 4 operators and
    each of ``k`` partners added; (U, B * 4 * k, ...) in (parent, operator, partner) order."""
    units, batch = labels.shape[:2]
    op_index, partner = np.unravel_index(np.arange(4 * k), (4, k))
    return append_step(
        np.repeat(labels, 4 * k, axis=1),
        np.repeat(ops, 4 * k, axis=1),
        np.tile(op_index, batch)[None].repeat(units, 0),
        np.tile(partner, batch)[None].repeat(units, 0),
        length,
    )


def empty_programs(units, count, length):
    """(units, count) programs of ``length`` with no concept yet: labels -1, operators NOP."""
    return np.full((units, count, length), -1, np.int64), np.full(
        (units, count, max(length - 1, 0)), NOP, np.int64
    )


def tree_length(tree: Formula) -> int:
    return 1 if isinstance(tree, int) else tree_length(tree[1]) + tree_length(tree[2])


def tree_operators(tree: Formula) -> list[str]:
    return (
        []
        if isinstance(tree, int)
        else [tree[0], *tree_operators(tree[1]), *tree_operators(tree[2])]
    )


def tree_labels(tree: Formula) -> list[int]:
    return [tree] if isinstance(tree, int) else tree_labels(tree[1]) + tree_labels(tree[2])


_PLAIN_NAME = re.compile(r'^[^()"\s](?:[^()"]*[^()"\s])?$')


def _name_text(name: str) -> str:
    """A label's name as written in a formula: quoted when it could be misread."""
    if _PLAIN_NAME.match(name) and not re.search(r"\b(AND|OR|NOT)\b", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_formula(tree: Formula, label_names) -> str:
    """Text with label names, parentheses and AND, OR, AND NOT: ``((water OR river) AND NOT
    boat)``. Names with parentheses, quotes, outer spaces or the operator words are quoted."""
    if isinstance(tree, int):
        return _name_text(label_names[tree])
    word, left, right = tree
    return f"({format_formula(left, label_names)} {word} {format_formula(right, label_names)})"


_TOKEN = re.compile(
    r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|AND NOT\b|AND\b|OR\b|[^()"]+?(?=\s+(?:AND|OR)\b|\)|$))'
)


def parse_formula(text: str, label_names) -> Formula:
    """The tree of ``format_formula``'s text; raises DissectError naming what is wrong."""
    numbers = {name: number for number, name in enumerate(label_names) if number > 0}
    tokens, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if not match or not match.group(1).strip():
            raise DissectError(f"formula {text!r}: cannot read it at character {position}")
        tokens.append(match.group(1).strip())
        position = match.end()

    def concept(token: str) -> int:
        name = token
        if token.startswith('"'):
            name = re.sub(r"\\(.)", r"\1", token[1:-1])
        if name not in numbers:
            raise DissectError(f"formula {text!r}: no label named {name!r}")
        return numbers[name]

    def parse(index: int) -> tuple[Formula, int]:
        if index >= len(tokens):
            raise DissectError(f"formula {text!r}: ends too early")
        if tokens[index] != "(":
            if tokens[index] in (")", "AND", "OR", "AND NOT"):
                raise DissectError(f"formula {text!r}: expected a concept, got {tokens[index]!r}")
            return concept(tokens[index]), index + 1
        left, index = parse(index + 1)
        if index >= len(tokens) or tokens[index] not in ("AND", "OR", "AND NOT"):
            raise DissectError(f"formula {text!r}: expected AND, OR or AND NOT")
        word = tokens[index]
        right, index = parse(index + 1)
        if index >= len(tokens) or tokens[index] != ")":
            raise DissectError(f"formula {text!r}: expected ')'")
        return (word, left, right), index + 1

    tree, end = parse(0)
    if end != len(tokens):
        raise DissectError(f"formula {text!r}: unexpected text after the formula")
    return tree


def evaluate_tree(tree: Formula, concept_masks) -> np.ndarray:
    """A formula's mask from its concepts' boolean masks (``concept_masks[label]``), in
    plain NumPy: the reference the packed arithmetic is tested against."""
    if isinstance(tree, int):
        return np.asarray(concept_masks[tree], bool)
    word, left, right = tree
    a, b = evaluate_tree(left, concept_masks), evaluate_tree(right, concept_masks)
    return {"AND": a & b, "OR": a | b, "AND NOT": a & ~b}[word]


def words_per_image(pixels: int) -> int:
    return -(-pixels // 32)


def pack_bits(masks: np.ndarray) -> np.ndarray:
    """(..., P) bool -> (..., ceil(P / 32)) uint32, pixel p in bit p % 32 of word p // 32."""
    masks = np.asarray(masks, bool)
    pad = words_per_image(masks.shape[-1]) * 32 - masks.shape[-1]
    if pad:
        masks = np.concatenate([masks, np.zeros((*masks.shape[:-1], pad), bool)], axis=-1)
    packed = np.packbits(masks, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32)


def unpack_bits(words: np.ndarray, pixels: int) -> np.ndarray:
    """Inverse of ``pack_bits``: (..., W) uint32 -> (..., pixels) bool."""
    as_bytes = np.ascontiguousarray(words.astype("<u4")).view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :pixels].astype(bool)


def concept_masks(
    label_planes: np.ndarray, image_labels: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """(len(labels), B, sh * sw) bool: each label's pixels in any plane of each image, or the
    whole image where it is an image-level label.

    Args:
      label_planes: (B, P, sh, sw) label numbers (``LabelArrays.label_planes``).
      image_labels: (B, M) image-level label numbers (0 = none).
      labels: (L,) the label numbers wanted (> 0).
    """
    batch = label_planes.shape[0]
    pixels = int(np.prod(label_planes.shape[2:]))
    row = np.full(
        max(
            int(label_planes.max(initial=0)),
            int(image_labels.max(initial=0)),
            int(labels.max(initial=0)),
        )
        + 1,
        -1,
    )
    row[labels] = np.arange(len(labels))
    result = np.zeros((len(labels), batch, pixels), bool)
    flat = label_planes.reshape(batch, label_planes.shape[1], pixels)
    image, _, pixel = np.indices(flat.shape, sparse=True)
    where = row[flat]
    hit = where >= 0
    result[
        where[hit], np.broadcast_to(image, flat.shape)[hit], np.broadcast_to(pixel, flat.shape)[hit]
    ] = True
    image_rows = row[image_labels]
    for i, j in zip(*np.nonzero((image_rows >= 0) & (image_labels > 0)), strict=True):
        result[image_rows[i, j], i] = True
    return result


def unit_masks(maps: np.ndarray, thresholds: np.ndarray, label_size: tuple[int, int]) -> np.ndarray:
    """(U, B, sh * sw) bool: the dissection's masks, (B, h, w, U) maps upsampled with the CPU
    tally's arithmetic (``upsample.resize_maps``) and compared with each unit's threshold
    (strict >)."""
    from jaxdissect.stats.upsample import resize_maps

    up = resize_maps(maps, *label_size) > np.asarray(thresholds, np.float32)
    return np.moveaxis(up.reshape(up.shape[0], -1, up.shape[-1]), -1, 0)


def program_bits(
    concepts: UInt32[Array, "k w"], labels: Int[Array, " n"], ops: Int[Array, " n-1"]
) -> UInt32[Array, " w"]:
    """One program's mask from its concepts' packed masks (labels index ``concepts``)."""
    mask = concepts[labels[0]]
    for step in range(ops.shape[0]):
        x = concepts[labels[step + 1]]
        op = ops[step]
        mask = jnp.select(
            [op == AND, op == OR, op == ANDNOT, op == NOTAND],
            [mask & x, mask | x, mask & ~x, x & ~mask],
            mask,
        )
    return mask


def _popcount(words, axis=-1):
    return jnp.sum(jax.lax.population_count(words).astype(jnp.int32), axis=axis)


@jax.jit
def extension_counts(
    unit_bits: UInt32[Array, "u w"],
    concepts: UInt32[Array, "c w"],
    candidates: Int[Array, "u k"],
    labels: Int[Array, "u b n"],
    ops: Int[Array, "u b n-1"],
) -> tuple[Int[Array, "u b k"], Int[Array, "u b k"], Int[Array, "u b"], Int[Array, "u b"]]:
    """Counts over one chunk of words that score every one-concept extension of a batch of
    programs for a batch of units.

    Args:
      unit_bits: (U, W) each unit's packed mask.
      concepts: (C, W) packed concept masks.
      candidates: (U, K) each unit's candidate concepts (rows of ``concepts``).
      labels, ops: (U, B, n) and (U, B, n - 1) programs over each unit's candidates
        (``labels`` index ``candidates[u]``).

    Returns:
      ``(|u & F & x|, |F & x|)`` of shape (U, B, K) for every candidate x, and
      ``(|u & F|, |F|)`` of shape (U, B); int32 (sum chunks in int64 on the host).
    """

    def per_unit(unit, candidate, labels, ops):
        own = concepts[candidate]  # (K, W)
        parents = jax.vmap(program_bits, in_axes=(None, 0, 0))(own, labels, ops)  # (B, W)
        both = parents[:, None, :] & own[None, :, :]
        return (
            _popcount(both & unit),
            _popcount(both),
            _popcount(parents & unit),
            _popcount(parents),
        )

    return jax.lax.map(lambda xs: per_unit(*xs), (unit_bits, candidates, labels, ops))


@functools.partial(jax.jit, static_argnames="block")
def intersection_counts(
    unit_bits: UInt32[Array, "u w"], concepts: UInt32[Array, "c w"], block: int = 64
) -> Int[Array, "u c"]:
    """(U, C) int32 |u & c| over one chunk of words, ``block`` concepts at a time."""
    count = concepts.shape[0]
    padded = -(-count // block) * block
    concepts = jnp.pad(concepts, ((0, padded - count), (0, 0)))
    per_block = jax.lax.map(
        lambda c: _popcount(unit_bits[:, None, :] & c[None]),
        concepts.reshape(-1, block, concepts.shape[1]),
    )  # (blocks, U, block)
    return jnp.moveaxis(per_block, 0, 1).reshape(unit_bits.shape[0], padded)[:, :count]


@jax.jit
def formula_counts(
    unit_bits: UInt32[Array, "u w"],
    concepts: UInt32[Array, "c w"],
    candidates: Int[Array, "u k"],
    labels: Int[Array, "u b n"],
    ops: Int[Array, "u b n-1"],
) -> tuple[Int[Array, "u b"], Int[Array, "u b"]]:
    """(|u & F|, |F|), (U, B) int32 over one chunk of words, of a batch of programs per unit
    (over each unit's candidates, as in ``extension_counts``)."""

    def per_unit(unit, candidate, labels, ops):
        masks = jax.vmap(program_bits, in_axes=(None, 0, 0))(concepts[candidate], labels, ops)
        return _popcount(masks & unit), _popcount(masks)

    return jax.lax.map(lambda xs: per_unit(*xs), (unit_bits, candidates, labels, ops))
