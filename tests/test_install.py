"""``pip install`` of a built wheel, without the Makefile, gives a working ``jaxdissect``
command, whose first dissection says on its first line that it compiles the CPU kernels.

Slow (about a minute on 2 cores: the kernels compile for real in the fresh install) and
offline: the wheel is built without build isolation and installed with ``--no-index
--no-deps`` into a new virtual environment that sees this environment's dependencies
through a path file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from probe_fixture import dyadic_features

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_wheel_installs_a_working_command(probe, tmp_path):
    # Build from a copy, so that the checkout gets no build/ or egg-info folders.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "jaxdissect", source / "jaxdissect", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
         str(tmp_path / "dist"), str(source)],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("jaxdissect-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # The dependencies (JAX, Numba, ...) come from this environment: no network needed.
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    command = venv / "bin" / "jaxdissect"

    def run(*args, merged=False):
        return subprocess.run(
            [command, *args], env=env, cwd=tmp_path, text=True, check=False,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        )  # fmt: skip

    helped = run("--help")
    assert helped.returncode == 0 and "fetch" in helped.stdout and "precompile" in helped.stdout
    where = subprocess.run(
        [python, "-c", "import jaxdissect; print(jaxdissect.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(purelib)  # the installed copy, not the checkout

    features = tmp_path / "features.npy"
    np.save(features, dyadic_features(len(probe.planes), (3, 3, 5)))
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(features),
            "--no-report", "--no-progress", "--kernel", "cpu"]  # fmt: skip
    first = run(*args, "--out", str(tmp_path / "out1"), merged=True)
    assert first.returncode == 0, first.stdout
    lines = first.stdout.splitlines()
    assert lines[0].startswith("jaxdissect: compiling CPU kernels once, about ")
    assert any(line.startswith("wrote ") for line in lines[1:])
    second = run(*args, "--out", str(tmp_path / "out2"))
    assert second.returncode == 0, second.stderr
    assert "compiling" not in second.stderr  # cached in the install
    assert (tmp_path / "out1" / "tally.csv").read_text() == (
        tmp_path / "out2" / "tally.csv"
    ).read_text()
    compiled = run("precompile")
    assert compiled.returncode == 0 and "CPU kernels compiled and cached" in compiled.stdout
