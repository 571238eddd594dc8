"""``import jaxdissect`` (and the CLI's start) imports JAX only when a command needs it."""

import subprocess
import sys
from pathlib import Path

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
