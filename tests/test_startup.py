"""``import jaxdissect`` (and the CLI's start) imports JAX only when a command needs it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxdissect


def test_import_is_light():
    code = (
        "import sys, jaxdissect, jaxdissect.cli; "
        "print(sorted(m for m in ('jax', 'numba', 'PIL.Image') if m in sys.modules))"
    )
    root = Path(__file__).parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves():
    for name in jaxdissect.__all__:
        assert getattr(jaxdissect, name).__name__ == name
    assert jaxdissect.pipeline.dissect is jaxdissect.dissect  # submodules too
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = jaxdissect.nonexistent


def test_the_cli_process_ends_with_its_output_and_status(probe, tmp_path):
    # ``python -m jaxdissect`` skips the interpreter's teardown after a finished command:
    # its output must still arrive whole, and a failure keep its status.
    from probe_fixture import dyadic_features

    features = tmp_path / "features.npy"
    np.save(features, dyadic_features(len(probe.planes), (3, 3, 5)))
    command = [sys.executable, "-m", "jaxdissect", "dissect", "--dataset", str(probe.directory),
               "--features", str(features), "--out", str(tmp_path / "out"), "--no-progress",
               "--no-report", "--cache", str(tmp_path / "cache")]  # fmt: skip
    root = Path(__file__).parent.parent
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("peak memory: host ")
    assert (tmp_path / "out" / "results.json").is_file()
    failed = subprocess.run([*command[:-4], "--batch-size", "0"], cwd=root, capture_output=True)
    assert failed.returncode == 2


def test_a_features_dissection_on_cpu_imports_no_jax(probe, tmp_path):
    """The CPU path (a features file, the Numba kernels, checkpoints, report) needs neither
    JAX nor Orbax: importing them would cost over a second of start-up."""
    from probe_fixture import dyadic_features

    features = tmp_path / "features.npy"
    np.save(features, dyadic_features(len(probe.planes), (3, 3, 5)))
    code = (
        "import sys; from jaxdissect.cli import main; "
        f"code = main(['dissect', '--dataset', {str(probe.directory)!r}, '--features', "
        f"{str(features)!r}, '--out', {str(tmp_path / 'out')!r}, '--no-progress', "
        f"'--cache', {str(tmp_path / 'cache')!r}, '--quantile', '0.05']); "
        "print(code, sorted(m for m in ('jax', 'orbax', 'jaxtyping') if m in sys.modules))"
    )
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 []"
    assert (tmp_path / "out" / "report.html").is_file()


def test_an_installed_accelerator_plugin_is_seen_without_importing_jax(tmp_path):
    (tmp_path / "jax_plugins" / "xla_fake").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "xla_fake" / "__init__.py").write_text("")
    code = (
        "import sys; from jaxdissect import runtime; "
        "print(runtime.accelerator_plugin_installed(), 'jax' in sys.modules)"
    )
    root = Path(__file__).parent.parent
    env = {"PYTHONPATH": f"{tmp_path}:{root}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env=env
    )
    assert done.stdout.strip() == "True False", done.stderr


def test_python_m_jaxdissect_runs_atexit_handlers(tmp_path):
    """A finished command ends through the interpreter's own teardown, so atexit handlers
    (a user's --model factory's, say) run: ``python -m jaxdissect`` once ended in os._exit."""
    marker = tmp_path / "atexit-ran"
    tally = Path(__file__).parent / "fixtures" / "golden" / "fixture-paper-cpu" / "tally.csv"
    code = (
        "import atexit, pathlib, runpy, sys\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        f"sys.argv = ['jaxdissect', 'summarize', {str(tally)!r}]\n"
        "runpy.run_module('jaxdissect', run_name='__main__')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "detectors" in done.stdout
    assert marker.read_text() == "yes"
