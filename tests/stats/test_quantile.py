import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.stats import quantile


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
    with pytest.raises(ValueError, match="`q` must lie"):
        quantile.quantile_init(3, 1.5, 100)
    with pytest.raises(ValueError, match="`q` must lie"):
        quantile.quantile_init(3, 0.0, 100)
    state = quantile.quantile_init(2, 0.01, 10)
    state = quantile.quantile_update(state, jnp.zeros((1000, 1, 1, 2)))
    with pytest.raises(ValueError, match="more positions"):
        quantile.quantile_result(state, 0.01)


def test_statistic_refuses_positions_beyond_its_index_arithmetic():
    # Issue 27, V8: a top-k wider than 2**30 - 1 columns wrapped the int32 fill, dropped
    # candidates and gave NaN thresholds; 2**64 positions wrapped the two-word count.
    from jaxdissect.errors import DissectError
    from jaxdissect.stats.cpu_quantile import cpu_quantile_init

    with pytest.raises(DissectError, match=r"`positions` = 2147483648 .* 2\*\*30 - 1") as caught:
        quantile.quantile_statistic(0.5, 2**31)
    assert caught.value.arguments == ("positions", "q")
    with pytest.raises(DissectError, match=r"`positions` must be >= 1 and below 2\*\*64"):
        quantile.quantile_statistic(1e-20, 2**64)
    with pytest.raises(DissectError, match=r"`buffer_size` must lie in \[1, 2\*\*30 - 1\]"):
        quantile.quantile_statistic(0.5, 100, buffer_size=2**30)
    with pytest.raises(DissectError, match="`buffer_size`"):
        cpu_quantile_init(1, 0.5, 100, buffer_size=-1)
    # The largest settings allowed are still accepted (construction allocates nothing).
    quantile.quantile_statistic(0.5, 2 * (2**30 - 3), buffer_size=2**30 - 1)
    quantile.quantile_statistic(1e-20, 2**64 - 1)


def test_default_q_is_the_exact_one():
    # The old float32 copy of q = 0.3 put 5 of these 20 results off NumPy's.
    rng = np.random.default_rng(4)
    for n in range(20, 40):
        values = rng.normal(size=(n, 1, 1, 2)).astype(np.float32)
        state = _fold(values, 0.3, 7)
        expected = np.quantile(values.reshape(-1, 2), 1 - 0.3, axis=0)
        np.testing.assert_array_equal(quantile.quantile_result(state), expected)
    assert quantile.quantile_q(state) == 0.3


def _cases():
    """Float32 samples: normal, negative, ties, tiny and large n."""
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 7, 50, 201, 4001):
        yield rng.normal(size=(n, 8)).astype(np.float32)
        yield -np.abs(rng.standard_cauchy(size=(n, 8))).astype(np.float32)
        yield (rng.integers(-3, 4, size=(n, 8)) / 3).astype(np.float32)  # ties


@pytest.mark.parametrize("q", [0.005, 0.3, 0.5, 0.995])
def test_result_under_jit_is_bit_equal_to_numpy(q):
    # XLA would fuse NumPy's a + (b - a) * t into one multiply-add: a different last bit.
    mismatched = 0
    for values in _cases():
        n, units = values.shape
        state = quantile.quantile_update(
            quantile.quantile_init(units, q, n), jnp.asarray(values[:, None, None, :])
        )
        result = jax.jit(quantile.quantile_result, static_argnames=("q", "positions"))
        got = np.asarray(result(state, q=q, positions=n))
        expected = np.quantile(values, 1 - q, axis=0)
        assert got.dtype == np.float32 and expected.dtype == np.float32
        mismatched += np.sum(got.view(np.uint32) != expected.view(np.uint32))
        np.testing.assert_array_equal(
            quantile.quantile_result(state).view(np.uint32), expected.view(np.uint32)
        )
    assert mismatched == 0


def test_jitted_result_is_nan_for_a_wrong_count():
    values = jnp.arange(24, dtype=jnp.float32).reshape(6, 2, 2, 1)
    state = quantile.quantile_update(quantile.quantile_init(1, 0.5, 24), values)
    assert np.isnan(quantile.quantile_result(state, 0.5, positions=22)).all()
    assert quantile.quantile_result(state, 0.5, positions=24) == np.quantile(np.arange(24), 0.5)
    with pytest.raises(ValueError, match="positions"):
        jax.jit(quantile.quantile_result)(state)


@pytest.mark.parametrize("start", [2**31 - 3, 2**32 - 3, 5 * 2**32 - 1])
def test_count_carries_past_32_bits(start):
    # Placed just below 2**31 or 2**32 without folding in that much data: 8 more positions.
    state = quantile.quantile_init(1, 1e-9, 10 * 2**32)._replace(
        count=jnp.asarray(quantile.split_words(start))
    )
    state = jax.jit(quantile.quantile_update)(state, jnp.ones((2, 2, 2, 1)))
    assert quantile.quantile_count(state) == start + 8
    assert np.asarray(state.count).tolist() == [(start + 8) // 2**32, (start + 8) % 2**32]
    merged = quantile.quantile_merge(state, state)
    assert quantile.quantile_count(merged) == 2 * (start + 8)
    from jaxdissect.stats.cpu_quantile import cpu_quantile_init, cpu_quantile_update

    host = cpu_quantile_init(1, 1e-9, 10 * 2**32)
    host.count[...] = quantile.split_words(start)
    cpu_quantile_update(host, np.ones((2, 2, 2, 1), np.float32))
    assert quantile.quantile_count(host) == start + 8


@pytest.mark.parametrize("n", [2**31 + 5, 2**32 + 7, 3 * 2**32 + 11])
def test_result_uses_the_exact_count(n):
    # q small enough that the top-k is a few values; the tail below them is a constant 0,
    # as if n - k zeros had been folded in. Reference: NumPy's arithmetic, written out.
    q = 2e-9
    k = quantile.topk_size(q, n)
    tail = np.linspace(3.0, 1.0, k).astype(np.float32)  # the k largest, descending
    state = quantile.quantile_init(1, q, n)._replace(
        top=jnp.asarray(tail[None, :]), count=jnp.asarray(quantile.split_words(n))
    )
    virtual = (n - 1) * (1 - q)
    low = int(np.floor(virtual))
    gamma = virtual - low
    ascending = np.concatenate([np.zeros(4, np.float32), tail[::-1]])  # positions n-k-4 ..
    a, b = ascending[low - (n - k - 4)], ascending[low + 1 - (n - k - 4)]
    if gamma >= 0.5:
        expected = b - (b - a) * np.float32(1 - gamma)
    else:
        expected = a + (b - a) * np.float32(gamma)
    assert quantile.quantile_result(state)[0] == expected
    jitted = jax.jit(quantile.quantile_result, static_argnames=("q", "positions"))
    assert jitted(state, q=q, positions=n)[0] == expected
    # The count wrapped to 32 bits would give another answer.
    if n > 2**32:
        wrapped = state._replace(count=jnp.asarray(quantile.split_words(n % 2**32)))
        assert quantile.quantile_result(wrapped)[0] != expected


def test_merge_refuses_states_of_another_q_or_k():
    values = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 3, 2)), jnp.float32)
    base = quantile.quantile_update(quantile.quantile_init(2, 0.2, 18), values)
    # Same k (ceil(q n) + 2 = 6 for both), another q: only the q words tell them apart.
    other_q = quantile.quantile_init(2, 0.21, 18)
    assert other_q.top.shape == base.top.shape
    with pytest.raises(ValueError, match="different q"):
        quantile.quantile_merge(base, other_q)
    with pytest.raises(ValueError, match="top-k arrays of shapes"):
        quantile.quantile_merge(base, quantile.quantile_init(2, 0.2, 180))
    merged = quantile.quantile_merge(base, quantile.quantile_init(2, 0.2, 18))
    np.testing.assert_array_equal(quantile.quantile_result(merged), quantile.quantile_result(base))


def test_result_is_the_same_float32_bits_on_host_and_under_jit():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(7, 4, 3, 5)).astype(np.float32)
    n = 7 * 4 * 3
    state = _fold(values, 0.1, 3)
    host = quantile.quantile_result(state)
    jitted = jax.jit(lambda s: quantile.quantile_result(s, 0.1, positions=n))(state)
    want = np.array([np.quantile(values[..., u].ravel(), 0.9) for u in range(5)], np.float32)
    for got in (host, jitted):
        assert np.asarray(got).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(got).view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("q", [0.005, 0.1, 0.5])
def test_statistic_equals_numpy_quantile_eagerly_and_under_jit(q):
    rng = np.random.default_rng(6)
    values = rng.normal(size=(9, 5, 4, 3)).astype(np.float32)
    values[:, :2] = 0.25  # ties
    n = values.shape[0] * 5 * 4
    stat = quantile.quantile_statistic(q, n)
    want = np.array([np.quantile(values[..., u].ravel(), 1 - q) for u in range(3)], np.float32)
    # Two halves merged, as two devices would.
    left = stat.update(stat.init(3), values[:4])
    right = jax.jit(stat.update)(stat.init(3), values[4:], jnp.ones(5, bool))
    state = stat.merge(left, right)
    # q and positions are static: four array leaves, none of them q.
    assert len(jax.tree.leaves(state)) == 4
    assert {x.dtype.name for x in jax.tree.leaves(state)} == {"float32", "int32", "uint32"}
    for got in (stat.result(state), jax.jit(stat.result)(state)):
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got).view(np.uint32), want.view(np.uint32))


def test_statistic_merge_refuses_states_of_other_settings():
    n = 2 * 3 * 3
    mine, theirs = quantile.quantile_statistic(0.2, n), quantile.quantile_statistic(0.21, n)
    with pytest.raises(ValueError, match="other settings"):
        mine.merge(mine.init(2), theirs.init(2))
    with pytest.raises(ValueError, match="other settings"):
        jax.jit(mine.merge)(mine.init(2), theirs.init(2))
    with pytest.raises(ValueError, match="other settings"):
        mine.result(quantile.quantile_init(2, 0.2, n))  # a loose state: q is an array
