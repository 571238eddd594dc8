import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from probe_fixture import make_probe


@pytest.fixture(scope="session")
def probe(tmp_path_factory):
    """The shared Broden-format fixture (read-only for tests)."""
    return make_probe(tmp_path_factory.mktemp("probe") / "broden")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache, never the user's."""
    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _restore_xla_flags():
    """XLA_FLAGS as it was before each test: ``pin_floats`` (a study's or the trainer's
    main, run in-process) writes os.environ, and later tests' subprocesses would inherit
    its ISA pin."""
    saved = os.environ.get("XLA_FLAGS")
    yield
    if saved is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = saved
