import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import quantile


def _fold(values, q, batch, buffer_size=None):
    """values: (N, h, w, U); fold in batches of ``batch`` (last one padded and masked)."""
    n, h, w, u = values.shape
    state = quantile.quantile_init(u, q, n * h * w, buffer_size)
    update = jax.jit(quantile.quantile_update)
    for start in range(0, n, batch):
        chunk = values[start : start + batch]
        valid = np.arange(batch) < chunk.shape[0]
        chunk = np.concatenate([chunk, np.full((batch - chunk.shape[0], h, w, u), 1e9, np.float32)])
        state = update(state, jnp.asarray(chunk), jnp.asarray(valid))
    return state


@pytest.mark.parametrize("q", [0.005, 0.01, 0.2, 0.5, 0.9])
@pytest.mark.parametrize(
    "batch,buffer_size", [(1, None), (3, None), (8, None), (1, 45), (3, 70), (8, 30)]
)
def test_equals_numpy_quantile(q, batch, buffer_size):
    # Small buffers flush often; buffer 30 < a batch of 8 * 20 positions takes the direct path.
    rng = np.random.default_rng(0)
    values = rng.normal(size=(13, 5, 4, 6)).astype(np.float32)
    state = _fold(values, q, batch, buffer_size)
    expected = np.quantile(values.reshape(-1, 6), 1 - q, axis=0)
    np.testing.assert_array_equal(quantile.quantile_result(state, q), expected.astype(np.float32))


def test_ties_and_exact_positions():
    # Quarters with many ties, and n such that (n - 1) * (1 - q) is an integer.
    rng = np.random.default_rng(1)
    values = (rng.integers(-4, 5, size=(201, 1, 1, 3)) / 4).astype(np.float32)
    for q in (0.005, 0.01, 0.25):
        state = _fold(values, q, 16)
        expected = np.quantile(values.reshape(-1, 3), 1 - q, axis=0)
        np.testing.assert_array_equal(quantile.quantile_result(state, q), expected)


def test_merge_equals_single_pass():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(20, 3, 3, 4)).astype(np.float32)
    whole = _fold(values, 0.05, 4)
    n = 20 * 9
    a = quantile.quantile_update(quantile.quantile_init(4, 0.05, n), jnp.asarray(values[:7]))
    b = quantile.quantile_update(quantile.quantile_init(4, 0.05, n), jnp.asarray(values[7:]))
    c = quantile.quantile_init(4, 0.05, n)
    for merged in (
        quantile.quantile_merge(a, b),
        quantile.quantile_merge(quantile.quantile_merge(b, c), a),
    ):
        np.testing.assert_array_equal(
            quantile.quantile_result(merged, 0.05), quantile.quantile_result(whole, 0.05)
        )


def test_traces_once_across_batches():
    traces = []

    def counted(state, acts, valid):
        traces.append(acts.shape)
        return quantile.quantile_update(state, acts, valid)

    update = jax.jit(counted)
    state = quantile.quantile_init(3, 0.1, 17 * 4)
    rng = np.random.default_rng(3)
    for start in range(0, 17, 4):
        chunk = np.zeros((4, 2, 2, 3), np.float32)
        real = rng.normal(size=(min(4, 17 - start), 2, 2, 3))
        chunk[: real.shape[0]] = real
        state = update(state, chunk, np.arange(4) < real.shape[0])
    assert len(traces) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="q must lie"):
        quantile.quantile_init(3, 1.5, 100)
    with pytest.raises(ValueError, match="q must lie"):
        quantile.quantile_init(3, 0.0, 100)
    state = quantile.quantile_init(2, 0.01, 10)
    state = quantile.quantile_update(state, jnp.zeros((1000, 1, 1, 2)))
    with pytest.raises(ValueError, match="more positions"):
        quantile.quantile_result(state, 0.01)
