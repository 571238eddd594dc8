"""The bundled Flax NNX training module: models, data, loop and checkpoints."""
