"""jaxdissect: Network Dissection in JAX.

Pure, jittable streaming statistics (init / update / merge / result over pytree states),
a Broden-format reader, and a driver that dissects a layer end to end.
"""

from jaxdissect.config import DissectConfig as DissectConfig
from jaxdissect.data.broden import BrodenDataset as BrodenDataset
from jaxdissect.data.broden import open_broden as open_broden
from jaxdissect.data.cache import LabelArrays as LabelArrays
from jaxdissect.data.cache import load_image_array as load_image_array
from jaxdissect.data.cache import load_label_arrays as load_label_arrays
from jaxdissect.dissection import Dissection as Dissection
from jaxdissect.dissection import Thresholds as Thresholds
from jaxdissect.errors import BrodenFormatError as BrodenFormatError
from jaxdissect.errors import DissectError as DissectError
from jaxdissect.errors import FeaturesError as FeaturesError
from jaxdissect.passes import compute_tally as compute_tally
from jaxdissect.passes import compute_thresholds as compute_thresholds
from jaxdissect.pipeline import dissect as dissect
from jaxdissect.pipeline import dissect_activations as dissect_activations
from jaxdissect.quantile import QuantileState as QuantileState
from jaxdissect.quantile import quantile_init as quantile_init
from jaxdissect.quantile import quantile_merge as quantile_merge
from jaxdissect.quantile import quantile_result as quantile_result
from jaxdissect.quantile import quantile_update as quantile_update
from jaxdissect.results import write_dissection as write_dissection
from jaxdissect.scores import iou as iou
from jaxdissect.scores import label_units as label_units
from jaxdissect.scores import summarize as summarize
from jaxdissect.sources import Activations as Activations
from jaxdissect.sources import features as features
from jaxdissect.sources import features_source as features_source
from jaxdissect.sources import load_model as load_model
from jaxdissect.tally import TallyState as TallyState
from jaxdissect.tally import tally_init as tally_init
from jaxdissect.tally import tally_merge as tally_merge
from jaxdissect.tally import tally_update as tally_update
from jaxdissect.upsample import bilinear_matrix as bilinear_matrix

__version__ = "0.1.0"
