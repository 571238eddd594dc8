"""The paper's studies, runnable as ``python -m experiments.<name>``."""
