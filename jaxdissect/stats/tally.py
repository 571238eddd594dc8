"""Exact IoU tallies: label areas G, intersections I and unit areas A, as integer counts.

For each image, each unit's map is upsampled (half-pixel bilinear) to the label size and
thresholded strictly (``> T_u``). The labels present in the image become slots
(``compact_labels``; the decoded cache stores labels that way); a matmul of the masks with
per-pixel slot counts gives every intersection of the image at once, and a scatter-add
moves them to the label axis. Counts are exact integers (float32 is exact per image, far
below 2**24; the state is int32). A count that would pass 2**31 - 1 stops there and raises
the state's ``saturated`` flag instead of wrapping to a negative number.

``union`` chooses which images count towards A[u, c] (see DESIGN.md):
``"paper"``: images carrying any label of primary category c;
``"lite"``: images where an active pixel hits a category-c label, or that carry an
image-level label of category c.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxdissect.config import UNIONS
from jaxdissect.errors import DissectError

INT32_MAX = 2**31 - 1


class TallyState(NamedTuple):
    """Integer counts summed over the images seen so far.

    Attributes:
      label_area: (L,) int32, G[l]: pixels of label l over all planes (image-level labels
        cover the whole image). Column 0 (unlabelled) is kept at zero.
      intersection: (U, L) int32, I[u, l].
      unit_area: (U, C) int32, A[u, c] under the state's union rule.
      overflow: () int32, images with more distinct pixel labels than slots, or more
        active units than ``max_active`` (must stay 0).
      saturated: () int32, nonzero once a count would have passed 2**31 - 1 (int32): such
        counts stop at 2**31 - 1 (a lower bound) instead of wrapping. Must stay 0 for
        exact counts; move the counts into int64 on the host before that (the driver does).
      settings: None, or in a state made by ``tally_statistic`` a leafless ``Settings``
        node (its static settings; no array leaf).
    """

    label_area: Int[Array, " labels"]
    intersection: Int[Array, "units labels"]
    unit_area: Int[Array, "units categories"]
    overflow: Int[Array, ""]
    saturated: Int[Array, ""] | None = None
    settings: Any = None


def tally_init(units: int, num_labels: int, num_categories: int) -> TallyState:
    """Zero counts for ``units`` units, labels numbered 0..num_labels-1, and categories."""
    for name, value in (("units", units), ("num_labels", num_labels)):
        if value < 1:
            raise DissectError(f"`{name}` must be >= 1, got {value!r}", arguments=(name,))
    return TallyState(
        label_area=jnp.zeros((num_labels,), jnp.int32),
        intersection=jnp.zeros((units, num_labels), jnp.int32),
        unit_area=jnp.zeros((units, num_categories), jnp.int32),
        overflow=jnp.zeros((), jnp.int32),
        saturated=jnp.zeros((), jnp.int32),
    )


def _saturate(old, new):
    """``new`` where the int32 addition of non-negative increments did not wrap, else
    2**31 - 1; and how many entries wrapped. (With old >= 0 and an increment in
    [0, 2**31), the sum wrapped exactly when it came out below ``old``.)"""
    wrapped = new < old
    return jnp.where(wrapped, INT32_MAX, new), jnp.sum(wrapped, dtype=jnp.int32)


def _saturated(state: TallyState):
    return jnp.zeros((), jnp.int32) if state.saturated is None else state.saturated


def _counted(state: TallyState, label_area, intersection, unit_area, overflow) -> TallyState:
    """The state with new counts, any that wrapped held at 2**31 - 1 and flagged."""
    wrapped = _saturated(state)
    new = []
    for old, value in (
        (state.label_area, label_area),
        (state.intersection, intersection),
        (state.unit_area, unit_area),
    ):
        value, count = _saturate(old, value)
        new.append(value)
        wrapped = wrapped + count
    return TallyState(*new, overflow, jnp.minimum(wrapped, 1), state.settings)


def tally_merge(a: TallyState, b: TallyState) -> TallyState:
    """Combine the tallies of two disjoint parts of the data (associative, commutative).

    Counts whose sum would pass 2**31 - 1 stop there and set ``saturated``.

    Raises:
      ValueError: the states hold counts of different shapes, or were made by
        ``tally_statistic`` with different settings.
    """
    shapes = [(x.shape, y.shape) for x, y in zip(a[:3], b[:3], strict=True)]
    if any(x != y for x, y in shapes):
        raise DissectError(
            f"tally_merge: the states `a` and `b` hold counts of different shapes {shapes}: "
            "made for different units, labels or categories",
            arguments=("a", "b"),
        )
    if a.settings != b.settings:
        raise DissectError(
            f"tally_merge: the states `a` and `b` were made with different settings ({a.settings!r} "
            f"and {b.settings!r})",
            arguments=("a", "b"),
        )
    a = a._replace(saturated=jnp.maximum(_saturated(a), _saturated(b)))
    return _counted(
        a,
        a.label_area + b.label_area,
        a.intersection + b.intersection,
        a.unit_area + b.unit_area,
        a.overflow + b.overflow,
    )


def unit_masks(
    acts: Float[Array, "h w units"],
    thresholds: Float[Array, " units"],
    row_matrix: Float[Array, "sh h"],
    col_matrix: Float[Array, "sw w"],
) -> Bool[Array, "units sh sw"]:
    """One image's unit masks: bilinear upsampling to (sh, sw), then a strict threshold."""
    upsampled = jnp.einsum(
        "yh,hwu,xw->uyx",
        row_matrix,
        acts.astype(jnp.float32),
        col_matrix,
        precision=jax.lax.Precision.HIGHEST,
    )
    return upsampled > thresholds[:, None, None]


def compact_labels(
    label_planes: Int[Array, "planes sh sw"], num_slots: int
) -> tuple[Int[Array, "planes sh sw"], Int[Array, " slots"], Bool[Array, ""]]:
    """One image's distinct labels as slots: slot 0 is "unlabelled", slots 1.. the labels.

    Args:
      label_planes: (P, sh, sw) label numbers.
      num_slots: room for this many distinct nonzero labels (static).

    Returns:
      slot_planes (P, sh, sw) slot indices, slot_labels (num_slots + 1,) the label of each
      slot (0 for unused ones), and whether the image had more labels than slots.
    """
    flat = jnp.concatenate([jnp.zeros((1,), label_planes.dtype), label_planes.ravel()])
    ordered = jnp.sort(flat)
    overflow = jnp.sum(ordered[1:] != ordered[:-1]) > num_slots
    # Pad with a sentinel above every label so the slots stay sorted for searchsorted.
    sentinel = jnp.iinfo(flat.dtype).max
    sorted_slots = jnp.unique(ordered, size=num_slots + 1, fill_value=sentinel)
    slot_planes = jnp.searchsorted(sorted_slots, label_planes).astype(jnp.int32)
    slot_labels = jnp.where(sorted_slots == sentinel, 0, sorted_slots)
    return slot_planes, slot_labels, overflow


def _image_tally(
    acts,
    thresholds,
    slot_planes,
    slot_labels,
    image_labels,
    valid,
    label_category,
    row_matrix,
    col_matrix,
    *,
    num_categories,
    union,
    mask_dtype,
    max_active,
):
    """One image's contributions, for its K tallied units (all U, or the active ones).

    Returns:
      (units (K,), pair_valid (K,), slot areas (S+1,), slot intersections (K, S+1), mask
      areas (K,), unit-area increments (K, C), overflow ()).
    """
    num_units = acts.shape[-1]
    num_slots = slot_labels.shape[0]
    if max_active is None:
        units = jnp.arange(num_units)
        pair_valid = jnp.broadcast_to(valid, (num_units,))
        overflow = jnp.zeros((), bool)
    else:
        # A map whose maximum is <= T has an empty mask (bilinear interpolation never
        # exceeds the maximum): only the other units need upsampling.
        active = (jnp.max(acts, axis=(0, 1)) > thresholds) & valid
        count = jnp.sum(active)
        (units,) = jnp.nonzero(active, size=max_active, fill_value=0)
        pair_valid = jnp.arange(max_active) < count
        overflow = count > max_active
        acts = acts[:, :, units]
        thresholds = thresholds[units]
    mask = unit_masks(acts, thresholds, row_matrix, col_matrix) & pair_valid[:, None, None]
    mask = mask.reshape(mask.shape[0], -1)
    mask_area = jnp.sum(mask, axis=1, dtype=jnp.int32)

    # A pixel carried by two planes counts twice: sum the one-hots over planes. Entries are
    # small integers, exact in bfloat16; the matmul accumulates in float32, exact below 2**24.
    planes = slot_planes.reshape(slot_planes.shape[0], -1)
    pixel_slots = jax.nn.one_hot(planes, num_slots, dtype=mask_dtype).sum(axis=0)
    pixel_slots = pixel_slots * valid.astype(mask_dtype)
    slot_area = jnp.sum(pixel_slots, axis=0, dtype=jnp.float32)
    slot_intersection = jnp.matmul(
        mask.astype(mask_dtype),
        pixel_slots,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )  # (K, S+1)

    # Categories: slot 0, unused slots and labels without one map to -1 (a zero one-hot).
    slot_category = jnp.where(slot_labels > 0, label_category[slot_labels], -1)
    slot_category_onehot = jax.nn.one_hot(slot_category, num_categories, dtype=jnp.float32)
    slot_category_onehot = slot_category_onehot * (slot_area > 0)[:, None]
    image_category = jnp.where(image_labels > 0, label_category[image_labels], -1)
    image_category_present = jnp.max(
        jax.nn.one_hot(image_category, num_categories, dtype=jnp.float32),
        axis=0,
        initial=0.0,
    )
    if union == "paper":
        present = jnp.maximum(jnp.max(slot_category_onehot, axis=0), image_category_present)
        counted = jnp.broadcast_to(present, (mask.shape[0], num_categories))
    else:
        hit = (slot_intersection > 0).astype(jnp.float32) @ slot_category_onehot
        counted = jnp.maximum((hit > 0).astype(jnp.float32), image_category_present)
    unit_area = mask_area[:, None] * counted.astype(jnp.int32)
    return (
        units,
        pair_valid,
        slot_area.astype(jnp.int32),
        slot_intersection.astype(jnp.int32),
        mask_area,
        unit_area,
        overflow,
    )


def tally_update_compact(
    state: TallyState,
    acts: Float[Array, "batch h w units"],
    thresholds: Float[Array, " units"],
    slot_planes: Int[Array, "batch planes sh sw"],
    slot_labels: Int[Array, "batch slots"],
    image_labels: Int[Array, "batch image_labels"],
    label_category: Int[Array, " labels"],
    row_matrix: Float[Array, "sh h"],
    col_matrix: Float[Array, "sw w"],
    valid: Bool[Array, " batch"] | None = None,
    *,
    union: str = "paper",
    mask_dtype=jnp.float32,
    max_active: int | None = None,
) -> TallyState:
    """Fold one batch into the tally, its labels already compacted into slots.

    Args:
      state: the running counts.
      acts: (B, h, w, U) activations at the layer's resolution.
      thresholds: (U,) per-unit thresholds (``quantile_result``).
      slot_planes: (B, P, sh, sw) slot index of every pixel of every plane (0 = none).
      slot_labels: (B, S + 1) label number of each slot (``compact_labels``).
      image_labels: (B, M) image-level label numbers (0 = none).
      label_category: (L,) primary category index of each label, -1 for none.
      row_matrix, col_matrix: ``bilinear_matrix(sh, h)`` and ``bilinear_matrix(sw, w)``.
      valid: optional (B,) mask; padded images (False) count nothing.
      union: "paper" or "lite", the rule for A (static).
      mask_dtype: operand type of the intersection matmul (static); float32, or bfloat16
        where the matrix units want it. Both are exact.
      max_active: if set (static), each image upsamples only its units whose maximum is
        above the threshold, at most this many; images with more are counted in
        ``state.overflow`` (their extra units are not tallied). None tallies every unit.

    Returns:
      The updated state. Jittable (mark the keyword arguments static). A count that would
      pass 2**31 - 1 stays there and sets ``saturated`` (never a negative count).
    """
    if union not in UNIONS:
        raise DissectError(f"`union` must be one of {UNIONS}, got {union!r}", arguments=("union",))
    # A NumPy table (as BrodenDataset gives) cannot be indexed by traced slot labels.
    label_category = jnp.asarray(label_category, jnp.int32)
    batch = acts.shape[0]
    label_height, label_width = slot_planes.shape[-2:]
    if valid is None:
        valid = jnp.ones((batch,), bool)
    per_image = jax.vmap(
        lambda a, p, s, m, v: _image_tally(
            a,
            thresholds,
            p,
            s,
            m,
            v,
            label_category,
            row_matrix,
            col_matrix,
            num_categories=state.unit_area.shape[1],
            union=union,
            mask_dtype=mask_dtype,
            max_active=max_active,
        )
    )
    units, pair_valid, slot_area, slot_intersection, mask_area, unit_area, overflow = per_image(
        acts, slot_planes, slot_labels, image_labels, valid
    )
    image_labels = jnp.where(valid[:, None], image_labels, 0)
    # Padding pairs point at unit 0 with zero counts, so they add nothing.
    slot_intersection = slot_intersection * pair_valid[:, :, None]
    mask_area = mask_area * pair_valid
    unit_area = unit_area * pair_valid[:, :, None]

    label_area = state.label_area.at[slot_labels.ravel()].add(slot_area.ravel())
    label_area = label_area.at[image_labels.ravel()].add(label_height * label_width)
    label_area = label_area.at[0].set(0)

    rows = units[:, :, None]  # (B, K, 1)
    intersection = state.intersection.at[rows, slot_labels[:, None, :]].add(slot_intersection)
    # An image-level label intersects a mask wherever the mask is on.
    image_label_hits = jnp.broadcast_to(
        mask_area[:, :, None], (*mask_area.shape, image_labels.shape[1])
    )
    intersection = intersection.at[rows, image_labels[:, None, :]].add(image_label_hits)
    intersection = intersection.at[:, 0].set(0)

    return _counted(
        state,
        label_area,
        intersection,
        state.unit_area.at[units].add(unit_area),
        state.overflow + jnp.sum(overflow, dtype=jnp.int32),
    )


def tally_update(
    state: TallyState,
    acts: Float[Array, "batch h w units"],
    thresholds: Float[Array, " units"],
    label_planes: Int[Array, "batch planes sh sw"],
    image_labels: Int[Array, "batch image_labels"],
    label_category: Int[Array, " labels"],
    row_matrix: Float[Array, "sh h"],
    col_matrix: Float[Array, "sw w"],
    valid: Bool[Array, " batch"] | None = None,
    *,
    num_slots: int = 64,
    union: str = "paper",
    mask_dtype=jnp.float32,
    max_active: int | None = None,
) -> TallyState:
    """Fold one batch into the tally, from raw label planes.

    Args:
      state: the running counts.
      acts: (B, h, w, U) activations at the layer's resolution.
      thresholds: (U,) per-unit thresholds (``quantile_result``).
      label_planes: (B, P, sh, sw) label numbers of every pixel-level plane (0 = none).
      image_labels: (B, M) image-level label numbers (0 = none).
      label_category: (L,) primary category index of each label, -1 for none.
      row_matrix, col_matrix: ``bilinear_matrix(sh, h)`` and ``bilinear_matrix(sw, w)``.
      valid: optional (B,) mask; padded images (False) count nothing.
      num_slots: static bound on distinct pixel labels per image; images above it are
        counted in ``state.overflow`` and must be re-run with more slots.
      union: "paper" or "lite", the rule for A (static).
      mask_dtype, max_active: see ``tally_update_compact``.

    Returns:
      The updated state. Jittable (mark the keyword arguments static).
    """
    if valid is None:
        valid = jnp.ones((acts.shape[0],), bool)
    slot_planes, slot_labels, overflow = jax.vmap(lambda p: compact_labels(p, num_slots))(
        label_planes
    )
    state = tally_update_compact(
        state,
        acts,
        thresholds,
        slot_planes,
        slot_labels,
        image_labels,
        label_category,
        row_matrix,
        col_matrix,
        valid,
        union=union,
        mask_dtype=mask_dtype,
        max_active=max_active,
    )
    return state._replace(overflow=state.overflow + jnp.sum(overflow & valid, dtype=jnp.int32))


def tally_statistic(
    num_labels: int,
    label_category,
    union: str = "paper",
    *,
    num_categories: int | None = None,
    num_slots: int = 64,
    mask_dtype=jnp.float32,
    max_active: int | None = None,
):
    """IoU counts G, I, A as a ``Statistic``, its settings closed over (optax-style).

    Args:
      num_labels: L, labels numbered 0..L-1 (0 is "unlabelled").
      label_category: (L,) primary category of each label, -1 for none (a static table).
      union: "paper" or "lite", the rule for A.
      num_categories: C (default: the largest category in ``label_category`` plus one).
      num_slots, mask_dtype, max_active: see ``tally_update``.

    Returns:
      ``Statistic(init, update, merge, result)`` with ``init(units) -> TallyState``;
      ``update(state, acts, thresholds, label_planes, image_labels, valid=None)`` (shapes
      as in ``tally_update``; the upsampling matrices come from the static shapes);
      ``merge(a, b)``, which refuses a state made with other settings; and
      ``result(state) -> (G, I, A)`` int32 counts. The state's settings are a leafless
      ``Settings`` node: no setting is an array leaf.
    """
    import numpy as np

    from jaxdissect.kernels.base import Statistic
    from jaxdissect.stats.statistic import Settings, check_settings
    from jaxdissect.stats.upsample import bilinear_matrix

    if union not in UNIONS:
        raise DissectError(f"`union` must be one of {UNIONS}, got {union!r}", arguments=("union",))
    table = np.asarray(label_category, np.int32)
    if table.shape != (num_labels,):
        raise DissectError(
            f"`label_category` has shape {table.shape}, expected ({num_labels},) for `num_labels`",
            arguments=("label_category", "num_labels"),
        )
    if num_categories is None:
        num_categories = int(table.max(initial=-1)) + 1
    settings = Settings(
        (
            ("num_labels", int(num_labels)),
            ("num_categories", int(num_categories)),
            ("label_category", tuple(table.tolist())),
            ("union", union),
            ("num_slots", int(num_slots)),
            ("mask_dtype", jnp.dtype(mask_dtype).name),
            ("max_active", max_active),
        )
    )

    def init(units: int) -> TallyState:
        return tally_init(units, num_labels, num_categories)._replace(settings=settings)

    def update(state, acts, thresholds, label_planes, image_labels, valid=None) -> TallyState:
        check_settings("tally_statistic update", settings, state.settings)
        (height, width), (label_height, label_width) = acts.shape[1:3], label_planes.shape[-2:]
        return tally_update(
            state,
            acts,
            thresholds,
            label_planes,
            image_labels,
            table,
            bilinear_matrix(label_height, height),
            bilinear_matrix(label_width, width),
            valid,
            num_slots=num_slots,
            union=union,
            mask_dtype=mask_dtype,
            max_active=max_active,
        )

    def merge(a: TallyState, b: TallyState) -> TallyState:
        check_settings("tally_statistic merge", settings, a.settings, b.settings)
        return tally_merge(a, b)

    def result(state: TallyState):
        check_settings("tally_statistic result", settings, state.settings)
        return state.label_area, state.intersection, state.unit_area

    return Statistic(init, update, merge, result)
