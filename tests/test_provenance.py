"""What every results.json records about how it was produced."""

import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

from experiments import common


def test_provenance_names_the_versions_and_the_commit():
    found = common.provenance()
    assert list(found["versions"]) == [
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax-checkpoint",
        "numpy",
        "numba",
    ]
    assert found["versions"]["flax"] == metadata.version("flax")
    assert found["versions"]["orbax-checkpoint"] == metadata.version("orbax-checkpoint")
    git = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
    )
    if git.returncode == 0:  # a git checkout (a source archive has no commit to record)
        assert re.fullmatch(r"[0-9a-f]{40}", found["git_commit"])
        assert found["git_commit"] == git.stdout.strip()
        assert isinstance(found["git_dirty"], bool)
    else:
        assert found["git_commit"] is None
    assert found["machine"]["cpus"] >= 1


def test_provenance_without_git_has_no_commit(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    found = common.provenance()
    assert found["git_commit"] is None and found["git_dirty"] is None


def test_pin_adds_the_isa_ceiling_unless_named(monkeypatch):
    import platform

    from jaxdissect import float_pin

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    float_pin.pin_floats()
    flags = __import__("os").environ["XLA_FLAGS"].split()
    assert "--xla_cpu_max_isa=AVX2" in flags and "--xla_gpu_deterministic_ops=true" in flags
    assert float_pin.float_settings()["xla_cpu_max_isa"] == "AVX2"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=SSE4_2")
    float_pin.pin_floats()
    assert "AVX2" not in __import__("os").environ["XLA_FLAGS"]
    assert float_pin.float_settings()["xla_cpu_max_isa"] == "SSE4_2"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setenv("XLA_FLAGS", "")
    float_pin.pin_floats()
    assert "xla_cpu_max_isa" not in __import__("os").environ["XLA_FLAGS"]


def test_provenance_records_the_cpu_and_isa():
    machine = common.provenance()["machine"]
    assert "cpu_model" in machine and "xla_cpu_max_isa" in machine


_XLA_FLAGS_BEFORE = {}  # what the first test of the pair below found


def test_pin_floats_writes_the_environment():
    from jaxdissect import float_pin

    _XLA_FLAGS_BEFORE["flags"] = os.environ.get("XLA_FLAGS")
    # Not through monkeypatch, as a study's main does; a ceiling no collected module pins.
    os.environ["XLA_FLAGS"] = "--xla_cpu_max_isa=SSE4_2"
    float_pin.pin_floats()
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_cpu_max_isa=SSE4_2",
        "--xla_gpu_deterministic_ops=true",
    ]


def test_the_test_before_left_xla_flags_as_they_were():
    """Runs after the test above (file order): conftest restored XLA_FLAGS."""
    assert "flags" in _XLA_FLAGS_BEFORE
    assert os.environ.get("XLA_FLAGS") == _XLA_FLAGS_BEFORE["flags"]
