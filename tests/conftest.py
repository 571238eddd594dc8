import os
import sys
from pathlib import Path

import pytest

# The fixtures beside this file, and the test folders (which mirror the package's layout),
# importable by name: some tests reuse another's helpers (a ViT test writes weights the way
# the PyTorch-weights test does), whatever order pytest collects them in.
TESTS = Path(__file__).parent
sys.path[:0] = [str(TESTS), *(str(d) for d in sorted(TESTS.iterdir()) if any(d.glob("test_*.py")))]

from probe_fixture import make_probe  # noqa: E402


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
