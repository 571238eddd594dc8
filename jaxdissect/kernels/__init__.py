"""Backends that run a dissection's two passes: ``cpu`` and ``xla`` (see ``base``)."""

from __future__ import annotations

import importlib.util

from jaxdissect import runtime
from jaxdissect.config import DissectConfig
from jaxdissect.errors import DissectError
from jaxdissect.kernels.base import Backend


def kernel_name(config: DissectConfig) -> str:
    """The kernel both passes run, "cpu" or "xla": ``config.kernel``, with "auto" meaning
    "cpu" when JAX runs on the CPU in one process and Numba is installed."""
    kernel = config.kernel
    if kernel == "auto":
        on_cpu = runtime.default_backend() == "cpu" and runtime.process_count() == 1
        # Numba is a dependency, but an environment built without it still dissects.
        kernel = "cpu" if on_cpu and importlib.util.find_spec("numba") is not None else "xla"
    check_processes(kernel, runtime.process_count())
    return kernel


def check_processes(kernel: str, processes: int) -> None:
    """A DissectError for the CPU kernel in a run of several processes: it counts in one."""
    if kernel == "cpu" and processes > 1:
        raise DissectError(
            "`kernel` 'cpu' runs in one process: use `kernel` 'xla' (or 'auto') under "
            "jax.distributed",
            arguments=("kernel",),
        )


def select_backend(config: DissectConfig) -> Backend:
    """The backend ``config`` asks for (see ``kernel_name``)."""
    if kernel_name(config) == "cpu":
        from jaxdissect.kernels import cpu

        return cpu.backend(config)
    from jaxdissect.kernels import xla

    return xla.backend(config)
