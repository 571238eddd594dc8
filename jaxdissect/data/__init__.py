"""Probe-set data: the Broden-format reader, writer and decoded-label cache."""

from jaxdissect.data.broden import BrodenDataset as BrodenDataset
from jaxdissect.data.broden import open_broden as open_broden
from jaxdissect.data.cache import LabelArrays as LabelArrays
from jaxdissect.data.cache import load_label_arrays as load_label_arrays
