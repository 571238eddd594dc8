"""The synthetic concept world: the embedded default probe set and training data."""
