"""The CPU backend's top images (NumPy) against the jitted XLA version, and pass 1 on the
CPU backend compiling no XLA program."""

import jax
import numpy as np
import pytest

from jaxdissect.config import DissectConfig
from jaxdissect.passes import compute_thresholds
from jaxdissect.sources import features_source
from jaxdissect.stats.top_images import top_images_init, top_images_update, top_images_update_host


@pytest.mark.parametrize("k", [1, 3, 7])
def test_host_update_equals_xla(k):
    # Values on a coarse grid: many equal maxima, so the tie rule (lower image first) matters.
    rng = np.random.default_rng(k)
    acts = (rng.integers(0, 4, (23, 2, 3, 5)) / 2).astype(np.float32)
    host, xla = top_images_init(5, k, 2, 3, np), top_images_init(5, k, 2, 3)
    step = jax.jit(top_images_update)
    for start in range(0, 23, 4):  # the last batch is short
        batch = acts[start : start + 4]
        indices = np.arange(start, start + len(batch), dtype=np.int32)
        host = top_images_update_host(host, batch, indices)
        xla = step(xla, batch, indices, np.ones(len(batch), bool))
    for ours, theirs in zip(host, xla, strict=True):
        assert isinstance(ours, np.ndarray)
        np.testing.assert_array_equal(ours, np.asarray(theirs))
    # And against a brute-force argsort of the whole set (ties: lower index first).
    maxima = acts.max(axis=(1, 2)).T
    order = np.argsort(-maxima, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(host.indices, order)
    np.testing.assert_array_equal(host.maps, acts[order, :, :, np.arange(5)[:, None]])


def test_cpu_threshold_pass_compiles_no_xla_program():
    compiled = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(event)

    # Shapes no other test uses, so that nothing is already in JAX's caches.
    acts = np.random.default_rng(0).random((19, 3, 2, 11), np.float32)
    read, shapes = features_source(acts)
    config = DissectConfig(batch_size=6, quantile=0.07, top_images=5, kernel="cpu")
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        result = compute_thresholds(read, 19, shapes, config, progress=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiled == []
    expected = np.quantile(acts.reshape(-1, 11), 0.93, axis=0).astype(np.float32)
    np.testing.assert_array_equal(result["features"].thresholds, expected)
