"""The CPU quantile kernel (``cpu_quantile``) against NumPy's quantile."""

import numpy as np
import pytest

from jaxdissect.stats import quantile


@pytest.mark.parametrize("q", [0.005, 0.2, 0.9])
@pytest.mark.parametrize("batch,buffer_size", [(1, None), (3, 1), (8, 7), (13, 50)])
def test_cpu_kernel_equals_numpy_quantile(q, batch, buffer_size):
    """The CPU kernel's state, merged every few values (buffer of 1 or 7), with ties."""
    from jaxdissect.stats.cpu_quantile import cpu_quantile_init, cpu_quantile_update

    rng = np.random.default_rng(2)
    values = rng.normal(size=(13, 5, 4, 6)).astype(np.float32)
    values[:, :2] = np.round(values[:, :2] * 2) / 2  # ties
    state = cpu_quantile_init(6, q, values[..., 0].size, buffer_size)
    maxima, finite = [], []
    for start in range(0, 13, batch):
        m, f = cpu_quantile_update(state, values[start : start + batch])
        maxima.append(m)
        finite.append(f)
    expected = np.quantile(values.reshape(-1, 6), 1 - q, axis=0)
    np.testing.assert_array_equal(quantile.quantile_result(state, q), expected.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate(maxima), values.max(axis=(1, 2)))
    assert np.concatenate(finite).all()
    values[4, 1, 2, 3] = np.nan
    values[9, 0, 0, 0] = -np.inf
    _, finite = cpu_quantile_update(cpu_quantile_init(6, q, values[..., 0].size), values)
    np.testing.assert_array_equal(np.flatnonzero(~finite), [4, 9])


@pytest.mark.parametrize("parallel", [False, True])
def test_cpu_kernel_floor_rises_mid_batch(parallel):
    """k = 5 of 120 values per unit, all in one batch: the floor rises after the first
    images (k candidates are merged before the 4,096-column buffer fills), later images are
    skipped whole or in part, many values tie at the floor, and the answer is still NumPy's."""
    from jaxdissect.stats.cpu_quantile import cpu_quantile_init, cpu_quantile_update

    rng = np.random.default_rng(4)
    values = rng.integers(0, 4, size=(20, 2, 3, 3)).astype(np.float32)  # many ties
    values[0] = 6.0  # six candidates: the floor rises to 6 within image 0
    values[7, 0, 0] = 9.0  # later images passing the floor, with ties at it
    values[12, 1, :, 1] = 6.0
    q = 3 / values[..., 0].size
    state = cpu_quantile_init(3, q, values[..., 0].size)
    assert state.top.shape[1] == 5 and state.buffer.shape[1] == 4096
    maxima, finite = cpu_quantile_update(state, values[:1], parallel)
    np.testing.assert_array_equal(state.top[:, -1], [6, 6, 6])  # merged, buffer not full
    np.testing.assert_array_equal(state.fill, [0, 0, 0])  # the sixth 6 ties: dropped
    more, _ = cpu_quantile_update(state, values[1:], parallel)
    expected = np.quantile(values.reshape(-1, 3), 1 - q, axis=0).astype(np.float32)
    np.testing.assert_array_equal(quantile.quantile_result(state, q), expected)
    np.testing.assert_array_equal(np.concatenate([maxima, more]), values.max(axis=(1, 2)))
    assert finite.all()


@pytest.mark.parametrize("parallel", [False, True])
def test_cpu_kernel_flags_nonfinite_values_in_skipped_images(parallel):
    """NaN and -inf in images whose maxima stay below the floor (skipped by the top-k), and
    +inf in one whose maximum equals a floor of +inf: each image is still flagged, its
    maxima ignore NaN, and the top-k is NumPy's over the other values."""
    from jaxdissect.stats.cpu_quantile import cpu_quantile_init, cpu_quantile_update

    values = np.full((4, 1, 6, 2), 1.0, np.float32)
    values[0] = 5.0  # floor 5 after image 0
    values[1, 0, 2, 0] = np.nan
    values[2, 0, 4, 1] = -np.inf
    values[3, 0, 1, :] = 5.0  # ties at the floor
    q = 3 / 24
    state = cpu_quantile_init(2, q, 24)
    maxima, finite = cpu_quantile_update(state, values, parallel)
    np.testing.assert_array_equal(finite, [True, False, False, True])
    np.testing.assert_array_equal(maxima, np.nanmax(values, axis=(1, 2)))
    np.testing.assert_array_equal(quantile.quantile_result(state, q), [5.0, 5.0])

    state = cpu_quantile_init(2, q, 24)
    cpu_quantile_update(state, np.full((1, 1, 6, 2), np.inf, np.float32), parallel)
    np.testing.assert_array_equal(state.top, np.full((2, 5), np.inf))  # floor +inf
    values = np.zeros((3, 1, 6, 2), np.float32)
    values[1, 0, 3, 1] = np.inf
    maxima, finite = cpu_quantile_update(state, values, parallel)
    np.testing.assert_array_equal(finite, [True, False, True])
    np.testing.assert_array_equal(maxima, [[0, 0], [0, np.inf], [0, 0]])
    np.testing.assert_array_equal(state.fill, [0, 0])  # nothing passed the floor
