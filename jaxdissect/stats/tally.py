"""Exact IoU tallies: label areas G, intersections I and unit areas A, as integer counts.

For each image, each unit's map is upsampled (half-pixel bilinear) to the label size and
thresholded strictly (``> T_u``). The labels present in the image become slots
(``compact_labels``; the decoded cache stores labels that way); a matmul of the masks with
per-pixel slot counts gives every intersection of the image at once, and a scatter-add
moves them to the label axis. Counts are exact integers (float32 is exact per image, far
below 2**24; the state is int32). A count that would pass 2**31 - 1 stops there and raises
the state's ``saturated`` flag instead of wrapping to a negative number (``tally_state``).

``union`` chooses which images count towards A[u, c] (see DESIGN.md):
``"paper"``: images carrying any label of primary category c;
``"lite"``: images where an active pixel hits a category-c label, or that carry an
image-level label of category c.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxdissect.config import UNIONS
from jaxdissect.errors import DissectError
from jaxdissect.stats.tally_checks import check_batch_shapes
from jaxdissect.stats.tally_state import TallyState, tally_init, tally_merge, with_counts


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


def _tallied_units(acts, thresholds, valid, max_active):
    """Which of one image's units to tally: (units (K,), pair_valid (K,), overflow ()).

    All U units when ``max_active`` is None, else the active ones, padded to
    ``max_active`` with unit 0 (``pair_valid`` False).
    """
    num_units = acts.shape[-1]
    if max_active is None:
        return jnp.arange(num_units), jnp.broadcast_to(valid, (num_units,)), jnp.zeros((), bool)
    # A map whose maximum is <= T has an empty mask (bilinear interpolation never
    # exceeds the maximum): only the other units need upsampling.
    active = (jnp.max(acts, axis=(0, 1)) > thresholds) & valid
    count = jnp.sum(active)
    (units,) = jnp.nonzero(active, size=max_active, fill_value=0)
    return units, jnp.arange(max_active) < count, count > max_active


def _counted_categories(
    slot_labels,
    slot_area,
    slot_intersection,
    image_labels,
    label_category,
    *,
    num_categories,
    union,
):
    """(K, C) float32 0/1: the categories whose A each tallied unit's mask area joins."""
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
        return jnp.broadcast_to(present, (slot_intersection.shape[0], num_categories))
    hit = (slot_intersection > 0).astype(jnp.float32) @ slot_category_onehot
    return jnp.maximum((hit > 0).astype(jnp.float32), image_category_present)


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
    num_slots = slot_labels.shape[0]
    units, pair_valid, overflow = _tallied_units(acts, thresholds, valid, max_active)
    if max_active is not None:
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

    counted = _counted_categories(
        slot_labels,
        slot_area,
        slot_intersection,
        image_labels,
        label_category,
        num_categories=num_categories,
        union=union,
    )
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
    check_batch_shapes(
        state,
        acts=acts,
        thresholds=thresholds,
        slot_planes=slot_planes,
        slot_labels=slot_labels,
        image_labels=image_labels,
        label_category=label_category,
        row_matrix=row_matrix,
        col_matrix=col_matrix,
        valid=valid,
    )
    # A NumPy table (as BrodenDataset gives) cannot be indexed by traced slot labels.
    label_category = jnp.asarray(label_category, jnp.int32)
    if valid is None:
        valid = jnp.ones((acts.shape[0],), bool)
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
    return _scatter_counts(
        state,
        *per_image(acts, slot_planes, slot_labels, image_labels, valid),
        slot_labels,
        jnp.where(valid[:, None], image_labels, 0),
        label_pixels=slot_planes.shape[-2] * slot_planes.shape[-1],
    )


def _scatter_counts(
    state,
    units,
    pair_valid,
    slot_area,
    slot_intersection,
    mask_area,
    unit_area,
    overflow,
    slot_labels,
    image_labels,
    *,
    label_pixels,
):
    """The state plus a batch's per-image contributions (``_image_tally``, batched), moved
    from slots and tallied units to the label and unit axes."""
    # Padding pairs point at unit 0 with zero counts, so they add nothing.
    slot_intersection = slot_intersection * pair_valid[:, :, None]
    mask_area = mask_area * pair_valid
    unit_area = unit_area * pair_valid[:, :, None]

    label_area = state.label_area.at[slot_labels.ravel()].add(slot_area.ravel())
    label_area = label_area.at[image_labels.ravel()].add(label_pixels)
    label_area = label_area.at[0].set(0)

    rows = units[:, :, None]  # (B, K, 1)
    intersection = state.intersection.at[rows, slot_labels[:, None, :]].add(slot_intersection)
    # An image-level label intersects a mask wherever the mask is on.
    image_label_hits = jnp.broadcast_to(
        mask_area[:, :, None], (*mask_area.shape, image_labels.shape[1])
    )
    intersection = intersection.at[rows, image_labels[:, None, :]].add(image_label_hits)
    intersection = intersection.at[:, 0].set(0)

    return with_counts(
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
    check_batch_shapes(
        state,
        acts=acts,
        thresholds=thresholds,
        label_planes=label_planes,
        image_labels=image_labels,
        label_category=label_category,
        row_matrix=row_matrix,
        col_matrix=col_matrix,
        valid=valid,
    )
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


def _category_table(label_category, num_categories):
    """``label_category`` as an int32 NumPy table; a DissectError naming it for values that
    are not integers in [-1, C) (C = ``num_categories`` where given)."""
    import numpy as np

    try:
        values = np.asarray(label_category)
    except (TypeError, ValueError):
        values = np.asarray([], dtype=object)
    if values.dtype.kind not in "iuf":
        raise DissectError(
            f"tally_statistic: `label_category` must hold integer category indices, got "
            f"{values.dtype} values",
            arguments=("label_category",),
        )
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values < -1)
    if num_categories is not None:
        bad |= values >= num_categories
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        upper = "C" if num_categories is None else num_categories
        raise DissectError(
            f"tally_statistic: `label_category`{list(index)} is {values[index]!r}: a label's "
            f"category is an integer in [-1, {upper}), -1 meaning none",
            arguments=("label_category",),
        )
    return values.astype(np.int32)


def _tally_settings(
    num_labels, label_category, union, num_categories, num_slots, mask_dtype, max_active
):
    """``tally_statistic``'s arguments checked: (the (L,) int32 category table, C, and the
    leafless ``Settings`` node)."""

    from jaxdissect.stats.checks import check_count
    from jaxdissect.stats.statistic import Settings

    if union not in UNIONS:
        raise DissectError(f"`union` must be one of {UNIONS}, got {union!r}", arguments=("union",))
    num_labels = check_count(num_labels, "num_labels", what="tally_statistic")
    num_slots = check_count(num_slots, "num_slots", what="tally_statistic")
    if max_active is not None:
        max_active = check_count(max_active, "max_active", what="tally_statistic")
    if num_categories is not None:
        num_categories = check_count(num_categories, "num_categories", what="tally_statistic")
    table = _category_table(label_category, num_categories)
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
    return table, num_categories, settings


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
    from jaxdissect.kernels.base import Statistic
    from jaxdissect.stats.statistic import check_settings
    from jaxdissect.stats.upsample import bilinear_matrix

    table, num_categories, settings = _tally_settings(
        num_labels, label_category, union, num_categories, num_slots, mask_dtype, max_active
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
