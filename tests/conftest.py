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
