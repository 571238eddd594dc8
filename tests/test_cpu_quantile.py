"""The CPU quantile kernel (``cpu_quantile``) against NumPy's quantile."""

import numpy as np
import pytest

from jaxdissect import quantile


@pytest.mark.parametrize("q", [0.005, 0.2, 0.9])
@pytest.mark.parametrize("batch,buffer_size", [(1, None), (3, 1), (8, 7), (13, 50)])
def test_cpu_kernel_equals_numpy_quantile(q, batch, buffer_size):
    """The CPU kernel's state, merged every few values (buffer of 1 or 7), with ties."""
    from jaxdissect.cpu_quantile import cpu_quantile_init, cpu_quantile_update

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
