"""The pure functions as a user composes them: all inside one jax.jit, and per device inside
a shard_map whose states are merged; checked against numpy.quantile and counting loops."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxdissect as jd
from jaxdissect.stats.top_images import top_images_init, top_images_merge, top_images_update

Q = 0.2
IMAGES, SIZE, UNITS, PLANES, LABELS = 8, 3, 4, 2, 7
LABEL_CATEGORY = np.array([-1, 0, 0, 0, 1, 1, -1], np.int32)  # NumPy, as open_broden gives
CATEGORIES = 2


def _data():
    """Activations with ties and negatives, label planes at the activations' size (so the
    upsampling is the identity and the loops below need none), image-level labels."""
    rng = np.random.default_rng(0)
    acts = (rng.integers(-20, 21, size=(IMAGES, SIZE, SIZE, UNITS)) / 4).astype(np.float32)
    planes = rng.integers(0, LABELS, size=(IMAGES, PLANES, SIZE, SIZE)).astype(np.int32)
    image_labels = np.zeros((IMAGES, 1), np.int32)
    image_labels[::3, 0] = 5
    return acts, planes, image_labels


def _reference(acts, planes, image_labels):
    """Slow, obvious loops: thresholds, G, I, A (paper union), IoU and labels."""
    thresholds = np.array(
        [np.quantile(acts[..., u].ravel(), 1 - Q) for u in range(UNITS)], np.float32
    )
    G = np.zeros(LABELS, np.int64)
    I = np.zeros((UNITS, LABELS), np.int64)
    A = np.zeros((UNITS, CATEGORIES), np.int64)
    for i in range(IMAGES):
        present = {int(label) for label in image_labels[i] if label > 0}
        for label in present:
            G[label] += SIZE * SIZE
        for p in range(PLANES):
            for y in range(SIZE):
                for x in range(SIZE):
                    if planes[i, p, y, x] > 0:
                        G[planes[i, p, y, x]] += 1
                        present.add(int(planes[i, p, y, x]))
        categories = {int(LABEL_CATEGORY[label]) for label in present} - {-1}
        for u in range(UNITS):
            area = 0
            for y in range(SIZE):
                for x in range(SIZE):
                    if acts[i, y, x, u] > thresholds[u]:
                        area += 1
                        for p in range(PLANES):
                            if planes[i, p, y, x] > 0:
                                I[u, planes[i, p, y, x]] += 1
            for label in image_labels[i]:
                if label > 0:
                    I[u, label] += area
            for c in categories:
                A[u, c] += area
    iou = np.zeros((UNITS, LABELS))
    best = np.full((UNITS, CATEGORIES), -1)
    for u in range(UNITS):
        for label in range(LABELS):
            c = LABEL_CATEGORY[label]
            union = 0 if c < 0 else A[u, c] + G[label] - I[u, label]
            iou[u, label] = I[u, label] / union if union > 0 else 0.0
            if (
                c >= 0
                and iou[u, label] > 0
                and (best[u, c] < 0 or iou[u, label] > iou[u, best[u, c]])
            ):
                best[u, c] = label
    return thresholds, G, I, A, iou, best


def _eye():
    return jd.bilinear_matrix(SIZE, SIZE)


def _check(thresholds, state, iou, labels):
    acts, planes, image_labels = _data()
    want_t, G, I, A, want_iou, best = _reference(acts, planes, image_labels)
    np.testing.assert_array_equal(np.asarray(thresholds).view(np.uint32), want_t.view(np.uint32))
    np.testing.assert_array_equal(np.asarray(state.label_area), G)
    np.testing.assert_array_equal(np.asarray(state.intersection), I)
    np.testing.assert_array_equal(np.asarray(state.unit_area), A)
    assert int(state.overflow) == 0 and I.sum() > 0
    # I, the union and the quotient each rounded once to float32 (all counts < 2**24 here,
    # so only the quotient is).
    assert np.all(np.abs(np.asarray(iou, np.float64) - want_iou) <= 2.0**-24 * want_iou)
    # Distinct IoUs of these small counts differ far beyond float32 rounding: no new ties.
    np.testing.assert_array_equal(np.asarray(labels.category_label), best)


def test_whole_dissection_inside_one_jit():
    acts, planes, image_labels = _data()
    positions = IMAGES * SIZE * SIZE

    @jax.jit
    def dissect(acts, planes, image_labels):
        state = jd.quantile_init(UNITS, Q, positions)
        for start in range(0, IMAGES, 3):  # several updates, the last batch smaller
            state = jd.quantile_update(state, acts[start : start + 3])
        thresholds = jd.quantile_result(state, Q, positions=positions)
        counts = jd.tally_init(UNITS, LABELS, CATEGORIES)
        counts = jd.tally_update(
            counts, acts, thresholds, planes, image_labels, LABEL_CATEGORY, _eye(), _eye()
        )
        iou = jd.iou(counts.label_area, counts.intersection, counts.unit_area, LABEL_CATEGORY)
        return thresholds, counts, iou, jd.label_units(iou, LABEL_CATEGORY, CATEGORIES)

    _check(*dissect(acts, planes, image_labels))


def sharded_check():
    """Run with 4 fake devices: per-device states merged inside shard_map equal one device."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() == 4
    acts, planes, image_labels = _data()
    positions = IMAGES * SIZE * SIZE
    mesh = Mesh(np.array(jax.devices()), ("data",))

    def gathered_merge(state, merge):
        everyone = jax.lax.all_gather(state, "data")
        merged = jax.tree.map(lambda x: x[0], everyone)
        for d in range(1, 4):
            merged = merge(merged, jax.tree.map(lambda x, d=d: x[d], everyone))
        return merged

    def per_device(acts, planes, image_labels):
        state = jd.quantile_update(jd.quantile_init(UNITS, Q, positions), acts)
        state = gathered_merge(state, jd.quantile_merge)
        thresholds = jd.quantile_result(state, Q, positions=positions)
        counts = jd.tally_update(
            jd.tally_init(UNITS, LABELS, CATEGORIES),
            acts,
            thresholds,
            planes,
            image_labels,
            LABEL_CATEGORY,
            _eye(),
            _eye(),
        )
        summed = jax.lax.psum(counts, "data")
        counts = gathered_merge(counts, jd.tally_merge)
        indices = jax.lax.axis_index("data") * acts.shape[0] + jnp.arange(acts.shape[0])
        top = top_images_update(
            top_images_init(UNITS, 3, SIZE, SIZE), acts, indices, jnp.ones(acts.shape[0], bool)
        )
        top = gathered_merge(top, top_images_merge)
        return thresholds, counts, summed, top

    sharded = jax.jit(
        jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P(), check_vma=False)
    )
    thresholds, counts, summed, top = sharded(acts, planes, image_labels)
    iou = jd.iou(counts.label_area, counts.intersection, counts.unit_area, LABEL_CATEGORY)
    _check(thresholds, counts, iou, jd.label_units(iou, LABEL_CATEGORY, CATEGORIES))
    for merged, added in zip(counts, summed, strict=True):
        np.testing.assert_array_equal(merged, added)
    one = top_images_update(
        top_images_init(UNITS, 3, SIZE, SIZE), acts, jnp.arange(IMAGES), jnp.ones(IMAGES, bool)
    )
    for name in one._fields:
        np.testing.assert_array_equal(getattr(top, name), getattr(one, name))
    # The slow reference for the top images: the 3 largest maxima, lower index on ties.
    maxima = acts.max(axis=(1, 2))
    for u in range(UNITS):
        order = sorted(range(IMAGES), key=lambda i: (-maxima[i, u], i))[:3]
        assert np.asarray(top.indices[u]).tolist() == order
    print("sharded ok")


def test_shard_map_merges_equal_one_device():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    code = "import test_functional_api as t; t.sharded_check()"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded ok" in done.stdout


def test_statistic_constructors_equal_the_loops_eagerly_and_under_jit():
    acts, planes, image_labels = _data()
    positions = IMAGES * SIZE * SIZE
    quantiles = jd.quantile_statistic(Q, positions)
    counts = jd.tally_statistic(LABELS, LABEL_CATEGORY, "paper", num_categories=CATEGORIES)
    top = jd.top_images_statistic(3)

    def run(acts, planes, image_labels):
        # Two halves with states of their own, merged, as two devices would.
        halves = [slice(0, 5), slice(5, IMAGES)]
        state = quantiles.merge(*(quantiles.update(quantiles.init(UNITS), acts[h]) for h in halves))
        thresholds = quantiles.result(state)
        tallied = counts.merge(
            *(
                counts.update(counts.init(UNITS), acts[h], thresholds, planes[h], image_labels[h])
                for h in halves
            )
        )
        best = top.merge(
            *(
                top.update(top.init(UNITS, SIZE, SIZE), acts[h], jnp.arange(IMAGES)[h])
                for h in halves
            )
        )
        return thresholds, tallied, top.result(best)

    for runner in (run, jax.jit(run)):
        thresholds, tallied, best = runner(acts, planes, image_labels)
        G, I, A = counts.result(tallied)
        iou = jd.iou(G, I, A, LABEL_CATEGORY)
        _check(thresholds, tallied, iou, jd.label_units(iou, LABEL_CATEGORY, CATEGORIES))
        assert int(tallied.saturated) == 0
        maxima = acts.max(axis=(1, 2))
        for u in range(UNITS):
            order = sorted(range(IMAGES), key=lambda i: (-maxima[i, u], i))[:3]
            assert np.asarray(best.indices[u]).tolist() == order
    # No setting is an array leaf: the tally state's leaves are its counts and two flags.
    assert len(jax.tree.leaves(counts.init(UNITS))) == 5


def test_statistic_merges_refuse_states_of_other_settings():
    import pytest

    paper = jd.tally_statistic(LABELS, LABEL_CATEGORY, "paper")
    lite = jd.tally_statistic(LABELS, LABEL_CATEGORY, "lite")
    with pytest.raises(ValueError, match="other settings"):
        paper.merge(paper.init(UNITS), lite.init(UNITS))
    with pytest.raises(ValueError, match="different settings"):
        jd.tally_merge(paper.init(UNITS), lite.init(UNITS))
    with pytest.raises(ValueError, match="different shapes"):
        jd.tally_merge(jd.tally_init(UNITS, LABELS, 2), jd.tally_init(UNITS + 1, LABELS, 2))
    with pytest.raises(ValueError, match="`label_category` has shape"):
        jd.tally_statistic(LABELS + 1, LABEL_CATEGORY)
    three, four = jd.top_images_statistic(3), jd.top_images_statistic(4)
    with pytest.raises(ValueError, match="k=4"):
        three.merge(three.init(UNITS, 2, 2), four.init(UNITS, 2, 2))
    with pytest.raises(ValueError, match="map shapes"):
        three.merge(three.init(UNITS, 2, 2), three.init(UNITS, 3, 3))
    with pytest.raises(ValueError, match="`k` must be"):
        jd.top_images_statistic(0)
