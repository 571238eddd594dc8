"""``python -m jaxdissect.precompile`` caches every Numba kernel a CPU dissection uses, with
the signatures the dissection calls them with (so the dissection compiles nothing)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from probe_fixture import dyadic_features

ROOT = Path(__file__).parent.parent


def _run(args, numba_cache, **kwargs):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], env=env, check=True, capture_output=True, text=True, **kwargs
    )


def test_precompile_caches_what_a_dissection_uses(probe, tmp_path):
    numba_cache = tmp_path / "numba"
    _run(["-m", "jaxdissect.precompile"], numba_cache)
    cached = sorted(p.name for p in numba_cache.rglob("*.nbc"))
    kernels = {name.split("-")[0] for name in cached}
    assert kernels == {
        "cpu_quantile._fold_units",
        "cpu_quantile._fold_parallel",
        "cpu_tally._slot_areas",
        "cpu_tally._unit_counts",
    }

    # A CPU dissection then loads those and compiles nothing: no new machine code cached.
    features = tmp_path / "features.npy"
    np.save(features, dyadic_features(len(probe.planes), (3, 3, 5)))
    _run(
        ["-m", "jaxdissect", "dissect", "--dataset", str(probe.directory), "--features",
         str(features), "--out", str(tmp_path / "out"), "--kernel", "cpu", "--no-report",
         "--no-progress", "--cache", str(tmp_path / "cache")],
        numba_cache,
    )  # fmt: skip
    assert sorted(p.name for p in numba_cache.rglob("*.nbc")) == cached
