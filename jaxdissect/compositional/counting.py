"""The packed masks of a layer's units and the probe's concepts (``Problem``), and how they
are counted (``Counter``): compiled loops on the CPU cores, or the jitted kernels of
``formulas`` sharded over every device. ``build_problem`` makes the masks in one pass over
the probe (the dissection's thresholds and upsampling: ``formulas.unit_masks``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.compositional import formulas
from jaxdissect.compositional.formulas import append_step, empty_programs


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
        labels, ops = empty_programs(len(units), rows.shape[1], 1)
        labels[:, :, 0] = np.arange(rows.shape[1])
        return extension_step(problem, rows, labels, ops, units)[:2]

    def partners(problem, rows, labels, ops, parents, partners, units):
        """|u & (F AND x)| and |F AND x|, by ``formula_counts``."""
        labels, ops = append_step(labels, ops, np.zeros_like(partners), partners, labels.shape[-1])
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


def _bucket(count: int) -> int:
    """Padded batch sizes (powers of two) so that jit compiles a few shapes only."""
    return 1 << max(count - 1, 0).bit_length()


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
