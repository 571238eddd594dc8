"""Compiles the CPU backend's Numba kernels ahead of time: ``jaxdissect precompile`` (or
``python -m jaxdissect.precompile``).

Each kernel is called once on tiny inputs of the types a dissection passes, so that Numba
(``cache=True``) writes its machine code to its cache and a first dissection only loads it
(about a second) instead of compiling (tens of seconds on two cores). ``make setup`` runs it.

Where the cache goes is Numba's rule: ``$NUMBA_CACHE_DIR`` when set, else the package's
``__pycache__`` folders when they are writable, else a user cache folder
(``~/.cache/numba`` on Linux), so a read-only install still caches, per user.
"""

from __future__ import annotations

import time

import numpy as np

# Measured: ``jaxdissect precompile`` in a fresh ``pip install`` on the 2-core machine took
# 36.2 s at a load average of 6.7, ``make setup``'s 31.8 s at 1.1 (README, "Installing
# without make").
COMPILE_ESTIMATE_S = 35


def _kernels():
    from jaxdissect.stats import cpu_quantile, cpu_tally

    return (
        cpu_quantile._fold_units,
        cpu_quantile._fold_parallel,
        cpu_tally._slot_areas,
        cpu_tally._unit_counts,
    )


def kernels_cached() -> bool:
    """Whether Numba's on-disk cache holds machine code for this CPU for every kernel a CPU
    dissection runs (False when it cannot tell: Numba's cache layout is internal)."""
    try:
        for kernel in _kernels():
            magic = kernel.targetctx.codegen().magic_tuple()
            index = kernel._cache._cache_file._load_index()
            if not any(key[1] == magic for key in index):
                return False
    except Exception:  # another Numba version's internals: assume a compile is due
        return False
    return True


def announce_and_compile(stream) -> None:
    """Before a first CPU dissection: says on one line that the kernels compile once, and
    compiles them (instead of sitting silent in the first batch)."""
    print(
        f"jaxdissect: compiling CPU kernels once, about {COMPILE_ESTIMATE_S} s on 2 cores "
        "(cached for later runs; `jaxdissect precompile` does this ahead of time)",
        file=stream,
        flush=True,
    )
    precompile()


def precompile() -> None:
    """Calls ``cpu_quantile_update`` (serial and parallel) and ``cpu_tally_batch`` on tiny
    inputs."""
    from jaxdissect.stats.cpu_quantile import cpu_quantile_init, cpu_quantile_update
    from jaxdissect.stats.cpu_tally import axis_cells, cpu_tally_batch

    acts = np.linspace(0, 1, 2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4)
    frozen = acts.copy()
    frozen.flags.writeable = False  # a features file's memory map: another Numba type
    for batch in (acts, frozen):
        for parallel in (False, True):  # small batches, and large ones on every core
            cpu_quantile_update(cpu_quantile_init(4, 0.1, 2 * 3 * 3, 8), batch, parallel)
    planes = np.ones((2, 1, 6, 6), np.uint8)  # slot 1 everywhere
    planes.flags.writeable = False  # as the decoded-label cache's memory map
    counts = (np.zeros(3, np.int64), np.zeros((4, 3), np.int64), np.zeros((4, 2), np.int64))
    cpu_tally_batch(
        counts,
        acts,
        np.full(4, 0.5, np.float32),
        planes,
        np.array([[0, 1], [0, 2]], np.int64),  # slot labels
        np.array([[0], [2]], np.int64),  # image-level labels
        np.array([-1, 0, 1], np.int64),  # label category
        axis_cells(6, 3),
        axis_cells(6, 3),
        union="lite",
    )


def main() -> None:
    start = time.perf_counter()
    precompile()
    print(f"jaxdissect: CPU kernels compiled and cached ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
