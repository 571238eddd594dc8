"""What every results.json records about how it was produced."""

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
