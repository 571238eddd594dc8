"""jaxdissect: Network Dissection in JAX.

Pure, jittable streaming statistics (init / update / merge / result over pytree states),
a Broden-format reader, and a driver that dissects a layer end to end.
"""

import importlib

__version__ = "0.1.0"

# The public names and their modules, imported on first use (PEP 562): ``import jaxdissect``
# and the CLI's start stay light (JAX alone takes over a second to import).
_EXPORTS = {
    "DissectConfig": "jaxdissect.config",
    "BrodenDataset": "jaxdissect.data.broden",
    "open_broden": "jaxdissect.data.broden",
    "LabelArrays": "jaxdissect.data.cache",
    "load_image_array": "jaxdissect.data.cache",
    "load_label_arrays": "jaxdissect.data.cache",
    "Dissection": "jaxdissect.dissection",
    "Thresholds": "jaxdissect.dissection",
    "BrodenFormatError": "jaxdissect.errors",
    "DissectError": "jaxdissect.errors",
    "FeaturesError": "jaxdissect.errors",
    "compute_tally": "jaxdissect.passes",
    "compute_thresholds": "jaxdissect.passes",
    "dissect": "jaxdissect.pipeline",
    "dissect_activations": "jaxdissect.driver",
    "QuantileState": "jaxdissect.stats.quantile",
    "quantile_init": "jaxdissect.stats.quantile",
    "quantile_merge": "jaxdissect.stats.quantile",
    "quantile_result": "jaxdissect.stats.quantile",
    "quantile_statistic": "jaxdissect.stats.quantile",
    "quantile_update": "jaxdissect.stats.quantile",
    "write_dissection": "jaxdissect.report.results",
    "iou": "jaxdissect.stats.scores",
    "label_units": "jaxdissect.stats.scores",
    "summarize": "jaxdissect.stats.scores",
    "Activations": "jaxdissect.sources",
    "features_activations": "jaxdissect.sources",
    "features_source": "jaxdissect.sources",
    "load_model": "jaxdissect.sources",
    "TallyState": "jaxdissect.stats.tally_state",
    "tally_init": "jaxdissect.stats.tally_state",
    "tally_merge": "jaxdissect.stats.tally_state",
    "tally_statistic": "jaxdissect.stats.tally",
    "tally_update": "jaxdissect.stats.tally",
    "top_images_statistic": "jaxdissect.stats.top_images",
    "Statistic": "jaxdissect.kernels.base",
    "bilinear_matrix": "jaxdissect.stats.upsample",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:  # a submodule, e.g. ``jaxdissect.pipeline`` after only ``import jaxdissect``
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})
