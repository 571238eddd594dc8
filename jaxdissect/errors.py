"""The one exception users catch: every bad input raises a subclass naming the culprit."""


class DissectError(ValueError):
    """Bad input to jaxdissect; the message names the file, row, field or layer."""


class BrodenFormatError(DissectError):
    """A Broden-format folder that cannot be read as such."""


class FeaturesError(DissectError):
    """Activations that disagree with the dataset, or that are not finite."""
