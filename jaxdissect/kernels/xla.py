"""The XLA backend: both passes jitted and sharded over every device, of every process.

The data axis of every batch is sharded over a 1-D ``Mesh`` of all devices (under
``jax.distributed`` each process reads only its rows of each batch). Each device folds its
own rows into its own state (``jax.shard_map``; the states carry a leading device axis),
so a step needs no collective: a replicated state updated from a sharded batch would make
XLA gather the whole batch onto every device. The states meet once per pass, and whenever
a pass checkpoint is written, through the statistic's ``merge`` (``collapse``). Results are
identical for any device count (integer counts, and top-k values that do not depend on
order). The last batch is padded and masked, so each step compiles once. The jitted steps
here are the driver's jit boundary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdissect.dissection import Thresholds
from jaxdissect.kernels.base import Backend, Batch, Statistic
from jaxdissect.kernels.common import (
    INT32_MAX,
    check_finite,
    checked,
    top_images_kept,
    zero_counts,
)
from jaxdissect.stats import quantile, tally
from jaxdissect.stats.top_images import top_images_init, top_images_merge, top_images_update
from jaxdissect.stats.upsample import bilinear_matrix

DATA = PartitionSpec("data")


def _own(state):
    """A device's own state inside ``shard_map`` (its block of the leading device axis)."""
    return jax.tree.map(lambda x: x[0], state)


def _stacked(state):
    return jax.tree.map(lambda x: x[None], state)


def _threshold_update(state, acts, valid, indices):
    """One device's pass-1 update: the top-k, each image's per-unit maxima (to size pass
    2's skipping of inactive units), the first non-finite image index, the top images."""
    state = dict(state)
    finite = jnp.all(jnp.isfinite(acts), axis=(1, 2, 3)) | ~valid
    state["first_bad"] = jnp.minimum(
        state["first_bad"], jnp.min(jnp.where(finite, INT32_MAX, indices))
    )
    batch_maxima = jnp.where(valid[:, None], jnp.max(acts, axis=(1, 2)), -jnp.inf)
    # The device's rows are contiguous image indices from indices[0].
    state["maxima"] = jax.lax.dynamic_update_slice(state["maxima"], batch_maxima, (indices[0], 0))
    state["quantile"] = quantile.quantile_update(state["quantile"], acts, valid)
    if "top" in state:
        state["top"] = top_images_update(state["top"], acts, indices, valid)
    return state


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=("mesh",))
def threshold_step(state, acts, valid, indices, *, mesh):
    """One jitted step of pass 1: every device updates its own state from its rows."""

    def local(state, acts, valid, indices):
        return _stacked(_threshold_update(_own(state), acts, valid, indices))

    return jax.shard_map(local, mesh=mesh, in_specs=DATA, out_specs=DATA)(
        state, acts, valid, indices
    )


@jax.jit
def _most_active_units(maxima, thresholds):
    """The largest number of units of one image whose maximum is above its threshold."""
    return jnp.max(jnp.sum(maxima > thresholds, axis=1))


@functools.partial(
    jax.jit,
    donate_argnums=(0,),
    static_argnames=("mesh", "union", "mask_dtype", "max_active"),
)
def tally_step(state, constants, acts, labels, valid, *, mesh, union, mask_dtype, max_active):
    """One jitted step of pass 2: every device counts its own rows."""

    def local(state, constants, acts, labels, valid):
        thresholds, label_category, rows, cols = constants
        slot_planes, slot_labels, image_labels = labels
        counts = tally.tally_update_compact(
            _own(state),
            acts,
            thresholds,
            slot_planes.astype(jnp.int32),
            slot_labels,
            image_labels,
            label_category,
            rows,
            cols,
            valid,
            union=union,
            mask_dtype=mask_dtype,
            max_active=max_active,
        )
        return _stacked(counts)

    specs = (DATA, PartitionSpec(), DATA, DATA, DATA)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=DATA)(
        state, constants, acts, labels, valid
    )


@functools.partial(jax.jit, static_argnames=("size",))
def _device_rows(arrays, start, *, size):
    """Rows [start, start + size) of arrays on a device, without a host round trip."""
    return tuple(jax.lax.dynamic_slice_in_dim(a, start, size) for a in arrays)


def mask_dtype_for_backend() -> jnp.dtype:
    """bfloat16 on accelerators (matrix units; exact for 0/1 masks), float32 on CPU."""
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def host(tree):
    """Device values on the host, whole, also when they span other processes' devices."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size:
        return array
    padding = np.zeros((size - array.shape[0], *array.shape[1:]), array.dtype)
    return np.concatenate([array, padding])


class _Placement:
    """The mesh over all devices, how this process's rows of a batch reach it, and the
    per-device states (a leading device axis, sharded over the mesh)."""

    def __init__(self, batch_size: int):
        self.mesh = Mesh(np.array(jax.devices()), ("data",))
        self.devices = self.mesh.size
        self.batch_size = -(-batch_size // self.devices) * self.devices
        self.data = NamedSharding(self.mesh, DATA)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def local_rows(self, start: int, stop: int) -> tuple[int, int, int]:
        """This process's rows of the batch at ``start``: (lo, hi, per process). Rows
        beyond ``stop`` are padding. With one process: the whole batch."""
        per = self.batch_size // jax.process_count()
        lo = min(start + jax.process_index() * per, stop)
        return lo, min(lo + per, stop), per

    def place(self, local) -> jax.Array:
        """Places this process's rows (already padded to its share) in the global batch."""
        if jax.process_count() == 1:
            return jax.device_put(local, self.data)
        return jax.make_array_from_process_local_data(
            self.data, np.asarray(local), (self.batch_size, *local.shape[1:])
        )

    def per_device(self, first, others=None):
        """Per-device states: ``first`` on device 0 and ``others`` (default: ``first``) on
        every other device, as (devices, ...) leaves sharded over the mesh."""
        others = first if others is None else others

        def place(leaf, other):
            leaf, other = np.asarray(leaf), np.asarray(other)
            shape = (self.devices, *leaf.shape)

            def block(index):
                devices = range(self.devices)[index[0]]
                stacked = np.stack([leaf if d == 0 else other for d in devices])
                return stacked[(slice(None), *index[1:])]

            # One device: as XLA names the steps' outputs, so that no step compiles twice.
            sharding = self.data if self.devices > 1 else self.replicated
            return jax.make_array_from_callback(shape, sharding, block)

        return jax.tree.map(place, first, others)

    def activations(self, acts, size: int) -> jax.Array:
        """Activations padded to ``size`` rows and placed; arrays already on a device (a
        model's output) stay there."""
        if isinstance(acts, jax.Array) and jax.process_count() == 1:
            acts = acts.astype(jnp.float32)
            if acts.shape[0] != size:
                acts = jnp.pad(acts, [(0, size - acts.shape[0])] + [(0, 0)] * (acts.ndim - 1))
            return jax.device_put(acts, self.data)
        return self.place(_pad(np.asarray(acts, np.float32), size))

    def labels(self, labels, lo: int, hi: int, per: int) -> tuple:
        if isinstance(labels.slot_planes, jax.Array) and hi - lo == per:
            # Already in the (single) device's memory (see ``pipeline``). Given the sharding
            # of the rows placed from the host, or the step compiles for each.
            return jax.device_put(_device_rows(tuple(labels), lo, size=per), self.data)
        return tuple(self.place(_pad(np.asarray(a[lo:hi]), per)) for a in labels)

    def read(self, source, shapes, ranges, first, labels):
        for number, (start, stop) in enumerate(ranges[first:], start=first + 1):
            lo, hi, per = self.local_rows(start, stop)
            acts = checked(source(lo, hi), shapes, hi - lo, lo)
            yield Batch(
                number=number,
                start=start,
                acts={layer: self.activations(a, per) for layer, a in acts.items()},
                indices=self.place(np.arange(lo, lo + per, dtype=np.int32)),
                valid=self.place(np.arange(per) < hi - lo),
                labels=None if labels is None else self.labels(labels, lo, hi, per),
            )


def _merged(per_device, merge):
    """The per-device states, on the host, combined with the statistic's ``merge``."""
    states = host(per_device)
    count = len(jax.tree.leaves(states)[0])
    return functools.reduce(
        merge, (jax.tree.map(lambda x, d=d: x[d], states) for d in range(count))
    )


def _thresholds(placement, layer, shape, num_images, config):
    height, width, units = shape
    kept = top_images_kept(config, shape)
    # Room past the last padded batch: a device's rows never shift its maxima window.
    rows = (-(-num_images // placement.batch_size) + 1) * placement.batch_size

    def single():
        state = {
            "quantile": quantile.quantile_init(units, config.quantile, num_images * height * width),
            "first_bad": np.asarray(INT32_MAX, np.int32),
            "maxima": np.full((rows, units), -np.inf, np.float32),
        }
        if kept:
            state["top"] = top_images_init(units, kept, height, width, xp=np)
        return state

    def update(state, batch):
        return threshold_step(state, batch.acts, batch.valid, batch.indices, mesh=placement.mesh)

    def merge(a, b):
        merged = {
            "quantile": quantile.quantile_merge(a["quantile"], b["quantile"]),
            "first_bad": np.minimum(a["first_bad"], b["first_bad"]),
            "maxima": np.maximum(a["maxima"], b["maxima"]),
        }
        if kept:
            merged["top"] = top_images_merge(a["top"], b["top"])
        return jax.tree.map(np.asarray, merged)

    def result(state):
        check_finite(state["first_bad"], num_images, layer)
        thresholds = quantile.quantile_result(state["quantile"], config.quantile)
        most_active = _most_active_units(state["maxima"], jnp.asarray(thresholds))
        top = state["top"] if kept else None
        return Thresholds(
            thresholds,
            int(most_active),
            None if top is None else np.asarray(top.indices),
            None if top is None else np.asarray(top.maps),
        )

    return Statistic(
        init=lambda: placement.per_device(single()),
        update=update,
        merge=merge,
        result=result,
        collapse=lambda state: _merged(state, merge),
        expand=lambda merged: placement.per_device(merged, single()),
    )


def flush_interval(
    batch_size: int, label_size: tuple[int, int], slot_planes: int, image_labels: int
) -> int:
    """Batches whose counts an int32 device state can take before they must move to the
    host: one image adds at most label pixels x (planes + image labels) to any count (a
    label in every plane, and again as each image-level label)."""
    label_height, label_width = label_size
    per_batch = batch_size * label_height * label_width * (slot_planes + image_labels)
    return max(1, INT32_MAX // per_batch)


def _tally(placement, layer, shape, thresholds, dataset, labels, config):
    """Pass 2: each image upsamples only the units whose map rises above their threshold
    (at most ``max_active``, measured in pass 1) unless ``config.skip_inactive`` is off.
    Device counts are int32; they move into the int64 host totals (the merged state) often
    enough that no device count can pass 2**31 (a host sync every few hundred batches, not
    every step)."""
    height, width, units = shape
    label_height, label_width = dataset.label_size
    flush_every = flush_interval(
        placement.batch_size,
        dataset.label_size,
        labels.slot_planes.shape[1],
        labels.image_labels.shape[1],
    )
    mask_dtype = mask_dtype_for_backend()
    constants = jax.device_put(
        (
            jnp.asarray(thresholds.thresholds, jnp.float32),
            jnp.asarray(dataset.label_category, jnp.int32),
            jnp.asarray(bilinear_matrix(label_height, height)),
            jnp.asarray(bilinear_matrix(label_width, width)),
        ),
        placement.replicated,
    )
    # Rounded up to a multiple of 8 so that similar layers share compiled steps.
    bound = -(-max(thresholds.max_active, 1) // 8) * 8
    max_active = bound if config.skip_inactive and bound < units else None
    empty = jax.tree.map(
        np.asarray, tally.tally_init(units, dataset.num_labels, len(dataset.categories))
    )

    def collapse(state):
        """The int64 totals with every device's counts added; refuses device counts that
        overflowed or saturated (no longer exact)."""
        part = host(state["device"])
        if part.overflow.any():  # cannot happen: pass 1 measured the bound
            raise RuntimeError(
                f"layer {layer!r}: {part.overflow.sum()} images overflowed the tally"
            )
        if part.saturated is not None and part.saturated.any():  # flush_interval prevents it
            raise RuntimeError(
                f"layer {layer!r}: a device's int32 count reached 2**31 - 1 before it moved to "
                "the host; the counts are not exact"
            )
        counts = [np.asarray(x, np.int64).sum(axis=0) for x in part[:3]]
        return [t + c for t, c in zip(state["totals"], counts, strict=True)]

    def expand(totals):
        return {"device": placement.per_device(empty), "totals": totals}

    def update(state, batch):
        device = tally_step(
            state["device"],
            constants,
            batch.acts,
            batch.labels,
            batch.valid,
            mesh=placement.mesh,
            union=config.union,
            mask_dtype=mask_dtype,
            max_active=max_active,
        )
        state = {"device": device, "totals": state["totals"]}
        return expand(collapse(state)) if batch.number % flush_every == 0 else state

    return Statistic(
        init=lambda: expand(zero_counts(units, dataset)),
        update=update,
        merge=lambda a, b: [x + y for x, y in zip(a, b, strict=True)],
        result=tuple,
        collapse=collapse,
        expand=expand,
    )


def backend(config) -> Backend:
    """The XLA backend for ``config``: batches rounded up to a multiple of the devices."""
    placement = _Placement(config.batch_size)
    return Backend(
        name="xla",
        batch_size=placement.batch_size,
        read=placement.read,
        thresholds=functools.partial(_thresholds, placement),
        tally=functools.partial(_tally, placement),
        wait=jax.block_until_ready,
    )
