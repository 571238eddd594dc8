"""``top_images_update_host`` redoes only the units a batch changes: ties at the k-th kept
image, batches out of image order, and units that never change, against a brute force."""

import numpy as np
import pytest

from jaxdissect.stats.top_images import top_images_init, top_images_update_host


@pytest.mark.parametrize("k", [1, 4])
def test_host_update_equals_brute_force_out_of_order(k):
    rng = np.random.default_rng(6)
    acts = (rng.integers(0, 3, (30, 2, 2, 6)) / 2).astype(np.float32)  # many equal maxima
    # A unit whose top never changes after the first batch (the last images).
    acts[:, :, :, 5] = (np.arange(30) - 30)[:, None, None]
    state = top_images_init(6, k, 2, 2, np)
    # Later images first: equal maxima of earlier (lower) images must still displace them.
    for start in (24, 18, 12, 6, 0):
        indices = np.arange(start, start + 6, dtype=np.int32)
        state = top_images_update_host(state, acts[start : start + 6], indices)
    maxima = acts.max(axis=(1, 2)).T
    order = np.argsort(-maxima, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(state.indices, order)
    np.testing.assert_array_equal(state.values, np.take_along_axis(maxima, order, axis=1))
    np.testing.assert_array_equal(state.maps, acts[order, :, :, np.arange(6)[:, None]])
    assert state.indices.dtype == np.int32
