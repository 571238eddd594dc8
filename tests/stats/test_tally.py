import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probe_fixture import dyadic_features, reference_tally

from jaxdissect import load_label_arrays, open_broden
from jaxdissect.config import DissectConfig
from jaxdissect.passes import compute_tally, compute_thresholds
from jaxdissect.sources import features_source
from jaxdissect.stats import tally, tally_state
from jaxdissect.stats.upsample import bilinear_matrix


def _thresholds(features, q=0.05):
    units = features.shape[-1]
    return np.quantile(features.reshape(-1, units), 1 - q, axis=0).astype(np.float32)


@pytest.mark.parametrize("union", ["paper", "lite"])
@pytest.mark.parametrize(
    "shape,skip,kernel",
    [
        ((4, 4, 5), True, "xla"),
        ((8, 8, 3), True, "xla"),
        ((4, 4, 5), False, "xla"),
        ((4, 4, 5), True, "cpu"),
        ((8, 8, 3), True, "cpu"),
        ((16, 16, 4), True, "cpu"),
    ],
)
def test_driver_tally_equals_numpy_loop(probe, union, shape, skip, kernel):
    features = dyadic_features(12, shape)
    dataset = open_broden(probe.directory)
    labels = load_label_arrays(dataset, progress=False)
    source, layer_shape = features_source(features)
    config = DissectConfig(
        union=union, batch_size=5, quantile=0.05, skip_inactive=skip, kernel=kernel
    )
    thresholds = compute_thresholds(source, 12, layer_shape, config, progress=False)["features"]
    np.testing.assert_array_equal(thresholds.thresholds, _thresholds(features))
    active = (features.max(axis=(1, 2)) > thresholds.thresholds).sum(axis=1)
    assert thresholds.max_active == active.max()
    G, I, A = compute_tally(
        source, labels, dataset, {"features": thresholds}, layer_shape, config, progress=False
    )["features"]
    G_ref, I_ref, A_ref = reference_tally(features, thresholds.thresholds, probe, union)
    np.testing.assert_array_equal(G, G_ref)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_array_equal(A, A_ref)
    assert I.sum() > 0 and A.sum() > 0 and (G > 0).sum() > 20


def _both_kernels(probe, features, union):
    """{kernel: (G, I, A)} and the thresholds, for real-valued features."""
    dataset = open_broden(probe.directory)
    labels = load_label_arrays(dataset, progress=False)
    source, layer_shape = features_source(features)
    results = {}
    for kernel in ("cpu", "xla"):
        config = DissectConfig(union=union, batch_size=5, quantile=0.05, kernel=kernel)
        thresholds = compute_thresholds(source, 12, layer_shape, config, progress=False)
        results[kernel] = compute_tally(
            source, labels, dataset, thresholds, layer_shape, config, progress=False
        )["features"]
    return results, thresholds["features"].thresholds


@pytest.mark.parametrize("union", ["paper", "lite"])
@pytest.mark.parametrize("shape", [(5, 7, 4), (24, 24, 3), (3, 16, 2)])
def test_both_kernels_equal_float64_loop_on_real_valued_maps(probe, union, shape):
    """Uneven scales and shrinking (24 -> 16): both kernels match an exact float64
    interpolation (these random values keep every pixel off float32 ties)."""
    features = np.random.default_rng(3).gamma(2.0, size=(12, *shape)).astype(np.float32)
    results, thresholds = _both_kernels(probe, features, union)
    reference = reference_tally(features, thresholds, probe, union)
    for cpu, xla, ref in zip(results["cpu"], results["xla"], reference, strict=True):
        np.testing.assert_array_equal(cpu, ref)
        np.testing.assert_array_equal(xla, ref)


def test_unions_differ_on_fixture(probe):
    features = dyadic_features(12, (4, 4, 5))
    thresholds = _thresholds(features)
    _, _, A_paper = reference_tally(features, thresholds, probe, "paper")
    _, _, A_lite = reference_tally(features, thresholds, probe, "lite")
    assert (A_lite <= A_paper).all() and (A_lite < A_paper).any()


def _batch_inputs(probe, features, start, stop):
    planes = np.zeros((stop - start, 5, *probe.label_size), np.int32)
    scalars = np.zeros((stop - start, 3), np.int32)
    for k, i in enumerate(range(start, stop)):
        for p, plane in enumerate(probe.planes[i]):
            planes[k, p] = plane
        scalars[k, : len(probe.scalars[i])] = probe.scalars[i]
    return jnp.asarray(features[start:stop]), jnp.asarray(planes), jnp.asarray(scalars)


def test_merge_is_associative_and_equals_one_pass(probe):
    features = dyadic_features(12, (4, 4, 5))
    thresholds = jnp.asarray(_thresholds(features))
    constants = dict(
        thresholds=thresholds,
        label_category=jnp.asarray(probe.label_category),
        row_matrix=bilinear_matrix(16, 4),
        col_matrix=bilinear_matrix(16, 4),
    )

    def part(start, stop):
        acts, planes, scalars = _batch_inputs(probe, features, start, stop)
        state = tally_state.tally_init(5, probe.num_labels, 6)
        return tally.tally_update(
            state, acts, label_planes=planes, image_labels=scalars, num_slots=24, **constants
        )

    whole = part(0, 12)
    a, b, c = part(0, 3), part(3, 8), part(8, 12)
    left = tally_state.tally_merge(tally_state.tally_merge(a, b), c)
    right = tally_state.tally_merge(a, tally_state.tally_merge(b, c))
    for x, y, z in zip(whole, left, right, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(y, z)


def test_overflow_is_counted(probe):
    features = dyadic_features(12, (4, 4, 5))
    acts, planes, scalars = _batch_inputs(probe, features, 0, 4)
    state = tally.tally_update(
        tally_state.tally_init(5, probe.num_labels, 6),
        acts,
        jnp.zeros(5),
        planes,
        scalars,
        jnp.asarray(probe.label_category),
        bilinear_matrix(16, 4),
        bilinear_matrix(16, 4),
        num_slots=2,
    )
    assert int(state.overflow) == 4


def test_tally_step_traces_once(probe):
    features = dyadic_features(12, (4, 4, 5))
    traces = []

    def counted(state, acts, planes, scalars, valid):
        traces.append(1)
        return tally.tally_update(
            state,
            acts,
            jnp.zeros(5),
            planes,
            scalars,
            jnp.asarray(probe.label_category),
            bilinear_matrix(16, 4),
            bilinear_matrix(16, 4),
            valid,
            num_slots=24,
        )

    step = jax.jit(counted)
    state = tally_state.tally_init(5, probe.num_labels, 6)
    for start in (0, 4, 8):
        acts, planes, scalars = _batch_inputs(probe, features, start, start + 4)
        state = step(state, acts, planes, scalars, jnp.ones(4, bool))
    assert len(traces) == 1


def test_thresholds_pass_equals_numpy(probe):
    features = np.random.default_rng(5).normal(size=(12, 4, 4, 5)).astype(np.float32)
    source, shape = features_source(features)
    got = compute_thresholds(
        source, 12, shape, DissectConfig(quantile=0.02, batch_size=5), progress=False
    )
    np.testing.assert_array_equal(got["features"].thresholds, _thresholds(features, 0.02))


def test_nchw_layout_equals_nhwc(probe):
    features = dyadic_features(12, (4, 4, 5))
    a, shape_a = features_source(features, "nhwc")
    b, shape_b = features_source(np.ascontiguousarray(features.transpose(0, 3, 1, 2)), "nchw")
    assert shape_a == shape_b
    np.testing.assert_array_equal(a(2, 7)["features"], b(2, 7)["features"])


def test_compact_labels_round_trip():
    rng = np.random.default_rng(0)
    planes = rng.choice([0, 3, 300, 7, 1000], size=(3, 6, 6)).astype(np.int32)
    slot_planes, slot_labels, overflow = tally.compact_labels(jnp.asarray(planes), 8)
    np.testing.assert_array_equal(np.asarray(slot_labels)[np.asarray(slot_planes)], planes)
    assert int(slot_labels[0]) == 0 and not bool(overflow)
    assert sorted(np.asarray(slot_labels)[1:5].tolist()) == [3, 7, 300, 1000]
    assert bool(tally.compact_labels(jnp.asarray(planes), 3)[2])


def test_bfloat16_mask_matmul_is_exact(probe):
    features = dyadic_features(12, (4, 4, 5))
    thresholds = jnp.asarray(_thresholds(features))
    acts, planes, scalars = _batch_inputs(probe, features, 0, 12)
    common = dict(
        thresholds=thresholds,
        label_planes=planes,
        image_labels=scalars,
        label_category=jnp.asarray(probe.label_category),
        row_matrix=bilinear_matrix(16, 4),
        col_matrix=bilinear_matrix(16, 4),
        num_slots=24,
    )
    f32 = tally.tally_update(tally_state.tally_init(5, probe.num_labels, 6), acts, **common)
    bf16 = tally.tally_update(
        tally_state.tally_init(5, probe.num_labels, 6), acts, mask_dtype=jnp.bfloat16, **common
    )
    for x, y in zip(f32, bf16, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("union", ["paper", "lite"])
def test_skipping_inactive_units_is_exact(probe, union):
    features = dyadic_features(12, (4, 4, 5))
    thresholds = jnp.asarray(_thresholds(features, 0.02))
    acts, planes, scalars = _batch_inputs(probe, features, 0, 12)
    common = dict(
        thresholds=thresholds,
        label_planes=planes,
        image_labels=scalars,
        label_category=jnp.asarray(probe.label_category),
        row_matrix=bilinear_matrix(16, 4),
        col_matrix=bilinear_matrix(16, 4),
        num_slots=24,
        union=union,
    )
    active = (np.asarray(acts).max(axis=(1, 2)) > np.asarray(thresholds)).sum(1)
    assert 0 < active.max() < 5  # some units are skipped somewhere
    dense = tally.tally_update(tally_state.tally_init(5, probe.num_labels, 6), acts, **common)
    sparse = tally.tally_update(
        tally_state.tally_init(5, probe.num_labels, 6), acts, max_active=int(active.max()), **common
    )
    for x, y in zip(dense, sparse, strict=True):
        np.testing.assert_array_equal(x, y)
    short = tally.tally_update(
        tally_state.tally_init(5, probe.num_labels, 6),
        acts,
        max_active=int(active.max()) - 1,
        **common,
    )
    assert int(short.overflow) == int((active == active.max()).sum())


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("as_jax", [False, True])
def test_numpy_label_category_eagerly_and_under_jit(jit, as_jax):
    # One 2x2 image at label size (identity upsampling), threshold 0.5: the mask is the
    # diagonal. Labels [[1, 2], [1, 0]], both in category 0. Counted by hand.
    acts = np.array([[[[1.0], [0.0]], [[0.0], [1.0]]]], np.float32)
    planes = np.array([[[[1, 2], [1, 0]]]], np.int32)
    label_category = np.array([-1, 0, 0], np.int32)  # NumPy, as open_broden gives
    if as_jax:
        label_category = jnp.asarray(label_category)
    eye = bilinear_matrix(2, 2)
    update = jax.jit(tally.tally_update) if jit else tally.tally_update
    state = update(
        tally_state.tally_init(1, 3, 1),
        acts,
        np.array([0.5], np.float32),
        planes,
        np.zeros((1, 1), np.int32),
        label_category,
        eye,
        eye,
    )
    assert np.asarray(state.label_area).tolist() == [0, 2, 1]
    assert np.asarray(state.intersection).tolist() == [[0, 1, 0]]
    assert np.asarray(state.unit_area).tolist() == [[2]]


def _near_limit_state(units, labels, categories, below):
    """A tally state whose every count is ``below`` short of 2**31 - 1."""
    start = tally_state.INT32_MAX - below
    state = tally_state.tally_init(units, labels, categories)
    return state._replace(
        label_area=jnp.full_like(state.label_area, start).at[0].set(0),
        intersection=jnp.full_like(state.intersection, start).at[:, 0].set(0),
        unit_area=jnp.full_like(state.unit_area, start),
    )


@pytest.mark.parametrize("jit", [False, True])
def test_counts_near_2_31_saturate_and_flag_instead_of_wrapping(jit):
    # One 2x2 image, every pixel label 1 (category 0), one unit active everywhere: each
    # update adds 4 to G[1], I[0, 1] and A[0, 0].
    acts = jnp.ones((1, 2, 2, 1), jnp.float32)
    planes = jnp.ones((1, 1, 2, 2), jnp.int32)
    args = (jnp.zeros((1,), jnp.float32), planes, jnp.zeros((1, 1), jnp.int32))
    eye = jnp.asarray(bilinear_matrix(2, 2))
    label_category = np.array([-1, 0], np.int32)

    def update(state):
        return tally.tally_update(state, acts, *args, label_category, eye, eye)

    update = jax.jit(update) if jit else update
    # 4 below the limit: the counts reach 2**31 - 1 exactly, no flag.
    exact = update(_near_limit_state(1, 2, 1, 4))
    assert int(exact.saturated) == 0
    assert int(exact.label_area[1]) == int(exact.intersection[0, 1]) == tally_state.INT32_MAX
    assert int(exact.unit_area[0, 0]) == tally_state.INT32_MAX
    # 3 below: int32 would wrap to -2**31; the counts stop at 2**31 - 1 and the flag is up.
    over = update(_near_limit_state(1, 2, 1, 3))
    assert int(over.saturated) == 1
    for count in (over.label_area[1], over.intersection[0, 1], over.unit_area[0, 0]):
        assert int(count) == tally_state.INT32_MAX
    assert all(int(np.asarray(x).min()) >= 0 for x in over[:3])
    # The flag stays up through later updates and merges.
    assert int(update(over).saturated) == 1
    assert int(tally_state.tally_merge(tally_state.tally_init(1, 2, 1), over).saturated) == 1


def test_merge_near_2_31_saturates_and_flags():
    a = _near_limit_state(2, 3, 1, 10)
    small = tally_state.tally_init(2, 3, 1)._replace(
        label_area=jnp.array([0, 10, 11], jnp.int32),
        intersection=jnp.zeros((2, 3), jnp.int32),
        unit_area=jnp.zeros((2, 1), jnp.int32),
    )
    merged = tally_state.tally_merge(a, small)
    assert np.asarray(merged.label_area).tolist() == [
        0,
        tally_state.INT32_MAX,
        tally_state.INT32_MAX,
    ]
    assert int(merged.saturated) == 1
    # Below the limit it is plain addition, no flag.
    fine = tally_state.tally_merge(a, small._replace(label_area=jnp.array([0, 10, 9], jnp.int32)))
    assert np.asarray(fine.label_area).tolist() == [
        0,
        tally_state.INT32_MAX,
        tally_state.INT32_MAX - 1,
    ]
    assert int(fine.saturated) == 0
