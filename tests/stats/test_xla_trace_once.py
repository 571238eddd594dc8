"""The XLA backend's own jitted steps (``kernels/xla.py``) and the model's jitted apply each
trace once over a whole dissection, the padded last batch included."""

import jax.numpy as jnp
import numpy as np

from jaxdissect.config import DissectConfig
from jaxdissect.kernels import xla
from jaxdissect.models.features import from_function
from jaxdissect.pipeline import dissect
from jaxdissect.stats import quantile, tally


def test_xla_steps_trace_once_across_batches(probe, monkeypatch):
    units = 7  # a layer shape no other test uses, so that nothing is cached before
    weights = np.random.default_rng(0).normal(size=(3, units)).astype(np.float32)
    model_traces, threshold_traces, tally_traces = [], [], []

    def features(params, x):
        model_traces.append(x.shape)
        pooled = x.reshape(x.shape[0], 4, 8, 4, 8, 3).mean(axis=(2, 4))
        return {"f": pooled @ params}

    def counted(calls, function):
        def wrapped(*args, **kwargs):
            calls.append(1)  # runs only while a step is traced
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        quantile, "quantile_update", counted(threshold_traces, quantile.quantile_update)
    )
    monkeypatch.setattr(
        tally, "tally_update_compact", counted(tally_traces, tally.tally_update_compact)
    )
    model = from_function(features, jnp.asarray(weights), ["f"])
    cached = xla.threshold_step._cache_size(), xla.tally_step._cache_size()
    # 12 images in batches of 5: 5, 5 and a last batch of 2 padded to 5.
    config = DissectConfig(kernel="xla", batch_size=5, quantile=0.05)
    result = dissect(
        probe.directory, model, config, layers=["f"], checkpoint_every=None, progress=False
    )
    assert result["f"].thresholds.shape == (units,)
    assert threshold_traces == [1] and tally_traces == [1]
    assert xla.threshold_step._cache_size() == cached[0] + 1
    assert xla.tally_step._cache_size() == cached[1] + 1
    # One trace to learn the layer's shape (one image), one for every batch.
    assert model_traces == [(1, 32, 32, 3), (5, 32, 32, 3)]


def test_labels_on_the_device_compile_the_tally_step_once(probe):
    """On one accelerator the labels wait in its memory (see ``pipeline``): full batches'
    rows are sliced there, the padded last batch's placed from the host, and both must
    reach the tally step with one sharding, or the step compiles twice."""
    import jax

    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import LabelArrays, load_label_arrays

    labels = load_label_arrays(open_broden(probe.directory), None, False)
    on_device = LabelArrays(*jax.device_put(tuple(labels)))
    units = 9  # a layer shape no other test uses, so that nothing is cached before
    weights = np.random.default_rng(1).normal(size=(3, units)).astype(np.float32)

    def features(params, x):
        return {"f": x.reshape(x.shape[0], 4, 8, 4, 8, 3).mean(axis=(2, 4)) @ params}

    model = from_function(features, jnp.asarray(weights), ["f"])
    cached = xla.tally_step._cache_size()
    # 12 images in batches of 5: two sliced on the device, then 2 rows padded to 5.
    config = DissectConfig(kernel="xla", batch_size=5, quantile=0.05)
    dissect(
        probe.directory, model, config, layers=["f"], labels=on_device,
        checkpoint_every=None, progress=False,
    )  # fmt: skip
    assert xla.tally_step._cache_size() == cached + 1
