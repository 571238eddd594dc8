"""Models to dissect: the zoo of the paper's networks, capturing named layers, and
PyTorch weights read without PyTorch."""
