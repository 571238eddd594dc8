"""JAX, imported on first use, and what it would run on, answered without importing it where
that cannot change the answer.

Importing JAX takes about a second, and a dissection on the CPU (a features file, the Numba
kernels) needs none of it. ``jax`` and ``jnp`` here are stand-ins that import the real
modules on their first attribute access, for modules whose CPU path must not import JAX.
``default_backend``, ``process_count`` and ``process_index`` import JAX only when the answer
depends on it: before JAX is imported no ``jax.distributed`` run can exist, and JAX runs on
the CPU when ``JAX_PLATFORMS=cpu`` or no accelerator plugin is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
import types


class _OnFirstUse(types.ModuleType):
    """A stand-in for the module ``name``: imports it on the first attribute access."""

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self.__name__), attribute)


jax = _OnFirstUse("jax")
jnp = _OnFirstUse("jax.numpy")


def loaded() -> bool:
    """Whether JAX has been imported in this process."""
    return "jax" in sys.modules


def is_array(x) -> bool:
    """Whether ``x`` is a jax.Array (or tracer); False without importing JAX."""
    return loaded() and isinstance(x, sys.modules["jax"].Array)


def is_tracer(x) -> bool:
    """Whether ``x`` is a jax tracer (under ``jax.jit``, its values unknown)."""
    return is_array(x) and isinstance(x, sys.modules["jax"].core.Tracer)


def accelerator_plugin_installed() -> bool:
    """Whether JAX could find an accelerator: a PJRT plugin (the ``jax_plugins`` namespace
    package or entry points: CUDA, ROCm, Metal) or libtpu, as JAX itself discovers them."""
    if importlib.util.find_spec("libtpu") is not None:
        return True
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    spec = importlib.util.find_spec("jax_plugins")
    locations = [] if spec is None else list(spec.submodule_search_locations or [])
    return any(True for _ in pkgutil.iter_modules(locations))


def default_backend() -> str:
    """``jax.default_backend()``; "cpu" without importing JAX when nothing else is possible."""
    if not loaded():
        platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
        if platforms == "cpu" or (not platforms and not accelerator_plugin_installed()):
            return "cpu"
    return jax.default_backend()


def process_count() -> int:
    """``jax.process_count()``; 1 before JAX is imported (no jax.distributed run yet)."""
    return jax.process_count() if loaded() else 1


def process_index() -> int:
    """``jax.process_index()``; 0 before JAX is imported."""
    return jax.process_index() if loaded() else 0
