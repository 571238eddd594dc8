"""The backends' common interface: each pass's statistic on either backend gives the same
thresholds and counts, and two states that saw disjoint batches merge into the whole."""

import importlib.util

import jax
import numpy as np
import pytest
from probe_fixture import dyadic_features, reference_tally

from jaxdissect import load_label_arrays, open_broden
from jaxdissect.config import DissectConfig
from jaxdissect.kernels import cpu, kernel_name, select_backend, xla
from jaxdissect.passes import batch_ranges
from jaxdissect.sources import features_source


def test_auto_kernel_is_cpu_on_cpu(monkeypatch):
    assert kernel_name(DissectConfig()) == ("cpu" if jax.default_backend() == "cpu" else "xla")
    assert kernel_name(DissectConfig(kernel="xla")) == "xla"
    assert select_backend(DissectConfig(kernel="xla")).name == "xla"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no Numba
    assert kernel_name(DissectConfig()) == "xla"
    with pytest.raises(ValueError, match="`kernel` must be one of"):
        DissectConfig(kernel="gpu")


def _fold(statistic, backend, source, shapes, ranges, labels=None):
    """States folded over each half of the batches separately and merged, and over all of
    them (each collapsed from its per-device states, as the driver does)."""
    halves = [ranges[: len(ranges) // 2], ranges[len(ranges) // 2 :]]
    states = []
    for part in [*halves, ranges]:
        state = statistic.init()
        for batch in backend.read(source, shapes, part, 0, labels):
            state = statistic.update(state, batch._replace(acts=batch.acts["f"]))
        states.append(statistic.collapse(state))
    return statistic.merge(states[0], states[1]), states[2]


@pytest.mark.parametrize("make_backend", [cpu.backend, xla.backend], ids=["cpu", "xla"])
def test_statistics_merge_to_the_whole(probe, make_backend):
    features = dyadic_features(12, (4, 4, 5))
    source, shapes = features_source(features, layer="f")
    config = DissectConfig(batch_size=4, quantile=0.05, top_images=3)
    backend = make_backend(config)
    ranges = batch_ranges(12, backend.batch_size)
    dataset = open_broden(probe.directory)
    labels = load_label_arrays(dataset, progress=False)

    thresholds = backend.thresholds("f", shapes["f"], 12, config)
    merged, whole = _fold(thresholds, backend, source, shapes, ranges)
    merged, whole = thresholds.result(merged), thresholds.result(whole)
    expected = np.quantile(np.moveaxis(features, -1, 0).reshape(5, -1), 0.95, axis=1)
    np.testing.assert_array_equal(whole.thresholds, expected.astype(np.float32))
    np.testing.assert_array_equal(merged.thresholds, whole.thresholds)
    assert merged.max_active == whole.max_active
    np.testing.assert_array_equal(merged.top_indices, whole.top_indices)

    tally = backend.tally("f", shapes["f"], whole, dataset, labels, config)
    merged, whole_counts = _fold(tally, backend, source, shapes, ranges, labels)
    want = reference_tally(features, whole.thresholds, probe, "paper")
    for got, part, expected_counts in zip(
        tally.result(whole_counts), tally.result(merged), want, strict=True
    ):
        np.testing.assert_array_equal(got, expected_counts)
        np.testing.assert_array_equal(part, expected_counts)


def test_a_saturated_device_tally_is_refused_not_merged(probe):
    import jax.numpy as jnp

    from jaxdissect.dissection import Thresholds

    dataset = open_broden(probe.directory)
    labels = load_label_arrays(dataset, None, False)
    config = DissectConfig(kernel="xla", batch_size=4)
    statistic = xla.backend(config).tally(
        "f", (4, 4, 3), Thresholds(np.zeros(3, np.float32), 3), dataset, labels, config
    )
    state = statistic.init()
    np.testing.assert_array_equal(statistic.collapse(state)[1], np.zeros((3, dataset.num_labels)))
    device = state["device"]
    state["device"] = device._replace(saturated=jnp.ones_like(device.saturated))
    with pytest.raises(RuntimeError, match=r"layer 'f'.*2\*\*31 - 1"):
        statistic.collapse(state)


def test_the_flush_interval_covers_a_label_in_every_plane_and_image_label():
    """One image can add label pixels x (planes + image labels) to one count: a label that
    covers every plane and is also each image-level label. Its device count must stay
    below 2**31 for a whole flush interval."""
    import jax.numpy as jnp

    from jaxdissect.stats import tally

    planes, image_labels, size = 2, 3, 8
    state = tally.tally_update_compact(
        tally.tally_init(1, 2, 1),
        jnp.ones((1, 2, 2, 1)),
        jnp.zeros(1),
        jnp.ones((1, planes, size, size), jnp.int32),  # slot 1 everywhere, in both planes
        jnp.asarray([[0, 1]], jnp.int32),  # slot 1 is label 1
        jnp.ones((1, image_labels), jnp.int32),  # label 1, three times
        jnp.zeros(2, jnp.int32),
        jnp.ones((size, 2)) / 2,
        jnp.ones((size, 2)) / 2,
    )
    per_image = size * size * (planes + image_labels)  # 320
    assert int(state.label_area[1]) == per_image
    batch = 4
    interval = xla.flush_interval(batch, (size, size), planes, image_labels)
    assert interval == 2147483647 // (batch * 320)  # 1677721
    assert interval * batch * per_image <= 2**31 - 1
