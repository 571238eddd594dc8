"""Exact per-unit quantile thresholds, streamed through a running top-k.

The threshold of unit u is ``numpy.quantile(A[..., u].ravel(), 1 - q)`` (linear
interpolation) over every spatial position of every image. With n positions that quantile
reads only the values at sorted positions floor((n - 1)(1 - q)) and the next, so a running
top-k per unit (``topk_size``) gives the exact answer without holding the activations:
``quantile_update`` folds a batch in, ``quantile_merge`` combines states from different
shards or hosts, and ``quantile_result`` interpolates exactly as NumPy does, on the host or
under ``jax.jit``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from jaxdissect import runtime
from jaxdissect.errors import DissectError
from jaxdissect.runtime import jax, jnp
from jaxdissect.stats.checks import check_count, check_real, check_state_bytes

if TYPE_CHECKING:
    from jaxtyping import Array, Bool, Float, Int, UInt32

WORD = 2**32
# Columns of ``top`` or ``buffer`` at most: a row's int32 ``fill`` plus a batch's candidates
# (each up to the buffer's width) must not wrap, or candidates are silently dropped.
MAX_COLUMNS = 2**30 - 1


class QuantileState(NamedTuple):
    """Running top-k of each unit's activations, with a staging buffer.

    A new value can only matter if it exceeds the unit's current k-th largest value (the
    last column of ``top``); those few are appended to the unit's row of ``buffer``, and
    only when a row would overflow is the buffer merged into ``top`` by one top-k. So the
    cost per value stays constant however large k grows (a top-k per batch would cost
    O(k) each time).

    Attributes:
      top: (U, k) float32, the k largest values merged so far, descending (-inf where fewer).
      buffer: (U, M) float32, candidate values not merged yet (-inf in unused columns).
      fill: (U,) int32, columns of each row of ``buffer`` in use.
      count: (2,) uint32, positions folded in per unit as (high, low) 32-bit words: JAX
        without x64 has no wider integer, and one int32 wraps at 2**31 positions (VGG-16's
        conv1_1 on Broden has 3.2e9). ``quantile_count`` reads it.
      q: (2,) uint32, the float64 bits of q as (high, low) words, so that
        ``quantile_result`` recovers the exact q (a float32 copy differs from NumPy's).
        In a state made by ``quantile_statistic`` it is a leafless ``Settings`` node
        instead: q, positions and k are static there, never array leaves.
    """

    top: Float[Array, "units k"]
    buffer: Float[Array, "units m"]
    fill: Int[Array, " units"]
    count: UInt32[Array, " words"]
    q: UInt32[Array, " words"]


def split_words(value: int) -> np.ndarray:
    """A non-negative integer below 2**64 as (2,) uint32 (high, low) words."""
    return np.array([value // WORD, value % WORD], np.uint32)


def join_words(words) -> int:
    """The integer held by (high, low) uint32 words (host)."""
    high, low = (int(w) for w in np.asarray(words))
    return high * WORD + low


def _add_words(a: UInt32[Array, " words"], b: UInt32[Array, " words"]) -> UInt32[Array, " words"]:
    """a + b on (high, low) words, the low words' carry moved into the high word."""
    low = a[1] + b[1]  # wraps modulo 2**32
    carry = (low < a[1]).astype(jnp.uint32)
    return jnp.stack([a[0] + b[0] + carry, low])


def _host(x, what: str):
    """``x`` as a NumPy array; a clear error under ``jax.jit``, where it is unknown."""
    if runtime.is_tracer(x):
        raise DissectError(
            f"quantile_result under jax.jit needs {what} as a Python number (static): "
            "pass `q` and `positions` (N * h * w, known from the shapes)",
            arguments=("q", "positions"),
        )
    return np.asarray(x)


def quantile_count(state: QuantileState) -> int:
    """Positions folded into ``state`` per unit (host)."""
    return join_words(_host(state.count, "positions"))


def quantile_q(state: QuantileState) -> float:
    """The exact q given to ``quantile_init`` (host)."""
    if _is_settings(state.q):
        return dict(state.q.value)["q"]
    return float(np.uint64(join_words(_host(state.q, "q"))).view(np.float64))


def topk_size(q: float, positions: int) -> int:
    """Number of largest values needed for the (1 - q) quantile of ``positions`` values."""
    q = check_real(q, "q")
    positions = check_count(positions, "positions")
    if not 0.0 < q < 1.0:
        raise DissectError(f"quantile `q` must lie in (0, 1), got {q!r}", arguments=("q",))
    if not 1 <= positions < WORD**2:
        raise DissectError(
            f"`positions` must be >= 1 and below 2**64 (the count's two uint32 words), got "
            f"{positions!r}",
            arguments=("positions",),
        )
    # NumPy reads sorted positions floor((n-1)(1-q)) and the next, i.e. the largest
    # 1 + ceil((n-1)q) <= ceil(qn) + 1 values in exact arithmetic; one more because NumPy
    # computes (n-1)(1-q) in float64, where 1-q is rounded and the product can land just
    # below an integer, flooring one position lower.
    k = min(positions, math.ceil(q * positions) + 2)
    if k > MAX_COLUMNS:
        raise DissectError(
            f"`positions` = {positions} with `q` = {q!r} needs the top {k} values per unit; "
            "the top-k holds at most 2**30 - 1 (int32 column arithmetic): lower `q` or `positions`",
            arguments=("positions", "q"),
        )
    return k


def _buffer_columns(k: int, buffer_size: int | None) -> int:
    """The staging columns M: ``buffer_size``, by default max(k, 4096), checked."""
    if buffer_size is None:
        return max(k, 4096)
    buffer_size = check_count(buffer_size, "buffer_size")
    if not 1 <= buffer_size <= MAX_COLUMNS:
        raise DissectError(
            "`buffer_size` must lie in [1, 2**30 - 1] (int32 column arithmetic), got "
            f"{buffer_size!r}",
            arguments=("buffer_size",),
        )
    return buffer_size


def quantile_init(
    units: int, q: float, positions: int, buffer_size: int | None = None
) -> QuantileState:
    """Empty state for ``units`` units whose (1 - q) quantile over ``positions`` values is wanted.

    Args:
      units: number of units U.
      q: upper-tail fraction in (0, 1); NetDissect uses 0.005.
      positions: total number of values per unit that will be folded in (N * h * w).
      buffer_size: staging columns M (default max(k, 4096)); a larger buffer merges less often.
        k and M are at most 2**30 - 1 (``MAX_COLUMNS``): larger settings are refused.

    Returns:
      A QuantileState with a (U, k) top-k, k = ceil(q * positions) + 2 (at most positions).
    """
    units = check_count(units, "units")
    return _init_arrays(jnp, units, q, positions, buffer_size)


def _init_arrays(xp, units, q, positions, buffer_size) -> QuantileState:
    """``quantile_init``'s state as arrays of ``xp`` (jax.numpy, or NumPy for the CPU
    backend, which then compiles no XLA program)."""
    k = topk_size(q, positions)
    buffer_size = _buffer_columns(k, buffer_size)
    check_state_bytes(
        4 * units * (k + buffer_size), "quantile init", ("units", "positions", "buffer_size")
    )
    return QuantileState(
        top=xp.full((units, k), -np.inf, np.float32),
        buffer=xp.full((units, buffer_size), -np.inf, np.float32),
        fill=xp.zeros((units,), np.int32),
        count=xp.asarray(split_words(0)),
        q=xp.asarray(split_words(int(np.float64(q).view(np.uint64)))),
    )


def _flush(state: QuantileState) -> QuantileState:
    """Merges the buffer into the top-k and empties it."""
    k = state.top.shape[1]
    if isinstance(state.top, np.ndarray):  # the CPU backend's state: no XLA program
        top = -np.sort(-np.concatenate([state.top, state.buffer], axis=1), axis=1)[:, :k]
        return state._replace(
            top=top, buffer=np.full_like(state.buffer, -np.inf), fill=np.zeros_like(state.fill)
        )
    top, _ = jax.lax.top_k(jnp.concatenate([state.top, state.buffer], axis=1), k)
    return state._replace(
        top=top, buffer=jnp.full_like(state.buffer, -jnp.inf), fill=jnp.zeros_like(state.fill)
    )


def quantile_update(
    state: QuantileState,
    acts: Float[Array, "batch h w units"],
    valid: Bool[Array, " batch"] | None = None,
) -> QuantileState:
    """Fold a batch of activations into the running top-k.

    Args:
      state: the running state.
      acts: (B, h, w, U) activations.
      valid: optional (B,) mask; padded images (False) are ignored.

    Returns:
      The updated state. Jittable; shapes are static.

    Raises:
      DissectError: ``acts`` is not a real (B, h, w, U) array, ``valid`` not a (B,) bool
        array, or known ``acts`` (NumPy, or jax outside ``jax.jit``) hold NaN or infinity.
    """
    _check_acts(acts, valid, state.top.shape[0])
    batch, height, width, units = acts.shape
    if units != state.top.shape[0]:
        raise DissectError(
            f"`acts` holds {units} units but `state` was made for {state.top.shape[0]}",
            arguments=("acts", "state"),
        )
    acts = acts.astype(jnp.float32)
    if valid is None:
        valid = jnp.ones((batch,), bool)
    acts = jnp.where(valid[:, None, None, None], acts, -jnp.inf)
    values = acts.reshape(batch * height * width, units).T
    if batch * height * width >= WORD:
        raise DissectError(
            f"`acts`: a batch of {batch * height * width} positions per unit (B * h * w) "
            "exceeds 2**32 - 1; pass smaller batches",
            arguments=("acts",),
        )
    added = jnp.sum(valid, dtype=jnp.uint32) * jnp.uint32(height * width)
    count = _add_words(state.count, jnp.stack([jnp.uint32(0), added]))
    size = values.shape[1]
    if size > state.buffer.shape[1]:  # static: the batch alone could overfill the buffer
        state = _flush(state)
        top, _ = jax.lax.top_k(jnp.concatenate([state.top, values], axis=1), state.top.shape[1])
        return state._replace(top=top, count=count)
    # Equal values leave the multiset of the k largest unchanged, so strict > is exact.
    candidate = values > state.top[:, -1:]
    needed = state.fill + jnp.sum(candidate, axis=1, dtype=jnp.int32)
    state = jax.lax.cond(jnp.any(needed > state.buffer.shape[1]), _flush, lambda s: s, state)
    candidate = values > state.top[:, -1:]
    column = state.fill[:, None] + jnp.cumsum(candidate, axis=1, dtype=jnp.int32) - 1
    column = jnp.where(candidate, column, state.buffer.shape[1])  # out of range: dropped
    rows = jnp.broadcast_to(jnp.arange(units)[:, None], column.shape)
    buffer = state.buffer.at[rows, column].set(values, mode="drop")
    fill = state.fill + jnp.sum(candidate, axis=1, dtype=jnp.int32)
    return state._replace(buffer=buffer, fill=fill, count=count)


def _check_acts(acts, valid, units: int) -> None:
    """A DissectError naming ``acts`` or ``valid`` when they are not (B, h, w, U) and (B,)
    bool arrays, or when known activations hold NaN or infinity."""
    if not (isinstance(acts, np.ndarray) or runtime.is_array(acts)):
        raise DissectError(
            f"quantile update: `acts` must be a (B, h, w, {units}) array, got "
            f"{type(acts).__name__}",
            arguments=("acts",),
        )
    real = jnp.issubdtype(acts.dtype, jnp.floating) or jnp.issubdtype(acts.dtype, jnp.integer)
    if acts.ndim != 4 or not real:
        raise DissectError(
            f"quantile update: `acts` must be a real (B, h, w, {units}) array, got shape "
            f"{tuple(acts.shape)} of {acts.dtype}",
            arguments=("acts",),
        )
    if valid is not None:
        dtype = valid.dtype if hasattr(valid, "dtype") else np.asarray(valid).dtype
        if np.shape(valid) != (acts.shape[0],) or np.dtype(dtype) != np.bool_:
            raise DissectError(
                f"quantile update: `valid` must be a ({acts.shape[0]},) bool array (one per "
                f"image of `acts`), got shape {np.shape(valid)} of {dtype}",
                arguments=("valid",),
            )
    if not runtime.is_tracer(acts):
        xp = np if isinstance(acts, np.ndarray) else jnp
        if not bool(xp.all(xp.isfinite(acts))):
            raise DissectError(
                "quantile update: `acts` holds NaN or infinite values; thresholds are "
                "quantiles of finite activations",
                arguments=("acts",),
            )


def _check_folded(count, positions: int) -> None:
    """A DissectError when a known count exceeds the ``positions`` the state was made for."""
    if not runtime.is_tracer(count):
        folded = join_words(count)
        if folded > positions:
            raise DissectError(
                f"quantile update: {folded} positions per unit were folded in, more than the "
                f"`positions` = {positions} the statistic was made for; make it with the total "
                "N * h * w of the images folded in",
                arguments=("positions", "acts"),
            )


def _is_settings(q) -> bool:
    return type(q).__name__ == "Settings" and type(q).__module__ == "jaxdissect.stats.statistic"


def _check_mergeable(a: QuantileState, b: QuantileState) -> None:
    """DissectError unless ``a`` and ``b`` hold the same k and the same q."""
    if a.top.shape != b.top.shape:
        raise DissectError(
            f"quantile_merge: the states `a` and `b` hold top-k arrays of shapes {a.top.shape} and "
            f"{b.top.shape}; states made with different units, q or positions cannot be merged",
            arguments=("a", "b"),
        )
    if _is_settings(a.q) or _is_settings(b.q):
        if a.q != b.q:
            raise DissectError(
                f"quantile_merge: the states `a` and `b` were made with different settings "
                f"({a.q!r} and {b.q!r})",
                arguments=("a", "b"),
            )
        return
    traced = any(runtime.is_tracer(q) for q in (a.q, b.q))
    # Under jax.jit the q leaves are unknown: only k (a shape) is checked there; the
    # constructor ``quantile_statistic`` keeps q static, so its merge checks q under jit too.
    if not traced and not np.array_equal(np.asarray(a.q), np.asarray(b.q)):
        raise DissectError(
            f"quantile_merge: the states `a` and `b` were made with different q "
            f"({quantile_q(a)!r} and {quantile_q(b)!r})",
            arguments=("a", "b"),
        )


def quantile_merge(a: QuantileState, b: QuantileState) -> QuantileState:
    """Combine the states of two disjoint parts of the data (associative, commutative).

    Raises:
      DissectError: the states hold different k, or different q (q is checked only where it
        is known: outside ``jax.jit``, or in states made by ``quantile_statistic``).
    """
    _check_mergeable(a, b)
    a, b = _flush(a), _flush(b)
    top, _ = jax.lax.top_k(jnp.concatenate([a.top, b.top], axis=1), a.top.shape[1])
    return a._replace(top=top, count=_add_words(a.count, b.count))


def quantile_result(
    state: QuantileState, q: float | None = None, *, positions: int | None = None
) -> np.ndarray | Float[Array, " units"]:
    """Per-unit thresholds equal to ``numpy.quantile(values, 1 - q)`` (method 'linear').

    NumPy's index arithmetic (float64) is done in Python on the static q and n, and its
    two-sided linear interpolation in float32, so the result equals NumPy's bit for bit.

    Args:
      state: the final state.
      q: the upper-tail fraction; defaults to the exact one given to ``quantile_init``.
      positions: n, the number of values folded in (N * h * w), as a Python int. Given,
        the function is pure jnp and traces under ``jax.jit`` (there q must be given too);
        a unit whose state holds another count comes out NaN. Omitted, n is read from the
        state on the host.

    Returns:
      (U,) float32 thresholds: a NumPy array, or a jax.Array when ``positions`` is given.
      Either way the values are the same float32 bits (NumPy's), on the host and under
      ``jax.jit``. ``quantile_statistic(q, positions).result`` needs no extra arguments
      and always returns a jax.Array.
    """
    on_host = positions is None
    n = quantile_count(state) if on_host else int(positions)
    q = quantile_q(state) if q is None else float(q)
    if n < 1:
        raise DissectError(
            "quantile_result: no values were folded into `state`", arguments=("state",)
        )
    if on_host:  # NumPy throughout: no XLA program, and NumPy's own two roundings
        state = QuantileState(*(np.asarray(x) for x in state[:4]), state.q)
    top = _flush(state).top
    k = top.shape[1]
    # numpy's _quantile for method 'linear' and a Python-float quantile.
    p = 1.0 - q
    virtual = (n - 1) * p
    if virtual >= n - 1:  # numpy points both neighbours at the last element (index -1)
        previous = following = n - 1
        gamma = virtual + 1.0
    else:
        previous = math.floor(virtual)
        following = previous + 1
        gamma = virtual - previous
    if n - previous > k:
        named = ("state",) if on_host else ("state", "positions")
        raise DissectError(
            f"quantile_result: `state` holds the top {k} values but the quantile of {n} "
            f"positions{'' if on_host else ' (`positions`)'} needs the top {n - previous}: more "
            "positions were folded in than quantile_init was told",
            arguments=named,
        )
    # Sorted position i is column n - 1 - i of the descending top-k.
    a = top[:, n - 1 - previous]
    b = top[:, n - 1 - following]
    # numpy's _lerp: a + (b - a) * t, or b - (b - a) * (1 - t) where t >= 0.5; the Python
    # float weight is rounded to float32 first (weak promotion), as in NumPy.
    upper = gamma >= 0.5
    product = (b - a) * np.float32(1.0 - gamma if upper else gamma)
    if on_host:
        return (b - product if upper else a + product).astype(np.float32)
    # XLA fuses x + y * t into one fused multiply-add (one rounding where NumPy has two).
    # Passing the product through integer bits stops that; OR-ing in a NaN pattern where the
    # state's count is not n also makes a wrong n visible.
    wrong_count = jnp.any(jnp.asarray(state.count) != jnp.asarray(split_words(n)))
    nan_bits = jnp.where(wrong_count, jnp.uint32(0x7FC00000), jnp.uint32(0))
    product = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(product, jnp.uint32) | nan_bits, jnp.float32
    )
    return b - product if upper else a + product


def quantile_statistic(q: float, positions: int, *, buffer_size: int | None = None):
    """The exact (1 - q) quantile of ``positions`` values per unit, as a ``Statistic``.

    Like an optax transformation, the returned functions close over the static settings:
    q, positions and k never become array leaves of the state (its ``q`` field is a
    leafless ``Settings`` node), so ``result`` traces under ``jax.jit`` with no extra
    arguments, and ``merge`` refuses a state made with other settings.

    Args:
      q: upper-tail fraction in (0, 1); NetDissect uses 0.005.
      positions: values per unit that will be folded in (N * h * w); below 2**64, and
        with k = ceil(q * positions) + 2 at most 2**30 - 1 (``MAX_COLUMNS``).
      buffer_size: staging columns (see ``quantile_init``), at most 2**30 - 1.

    Returns:
      ``Statistic(init, update, merge, result)`` with ``init(units) -> QuantileState``,
      ``update(state, acts, valid=None)`` (``acts`` (B, h, w, U), ``valid`` (B,) bool),
      ``merge(a, b)`` and ``result(state) -> (U,) float32 jax.Array``, bit for bit
      ``numpy.quantile(values, 1 - q)`` on the host and under ``jax.jit``.
    """
    from jaxdissect.kernels.base import Statistic
    from jaxdissect.stats.statistic import Settings, check_settings

    k = topk_size(q, positions)
    _buffer_columns(k, buffer_size)
    settings = Settings(
        (("q", float(q)), ("positions", int(positions)), ("k", k), ("buffer", buffer_size))
    )

    def init(units: int) -> QuantileState:
        return quantile_init(units, q, positions, buffer_size)._replace(q=settings)

    def update(state: QuantileState, acts, valid=None) -> QuantileState:
        check_settings("quantile_statistic update", settings, state.q)
        state = quantile_update(state, acts, valid)
        _check_folded(state.count, positions)
        return state

    def merge(a: QuantileState, b: QuantileState) -> QuantileState:
        check_settings("quantile_statistic merge", settings, a.q, b.q)
        return quantile_merge(a, b)

    def result(state: QuantileState):
        check_settings("quantile_statistic result", settings, state.q)
        return quantile_result(state, q, positions=positions)

    return Statistic(init, update, merge, result)
