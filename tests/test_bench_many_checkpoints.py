"""bench/many_checkpoints.py times fresh runs and says what it lacks, without running it
whole (minutes of CPU)."""

import importlib.util
import subprocess

from bench import many_checkpoints


def test_each_run_starts_from_an_empty_folder(tmp_path, monkeypatch):
    out = tmp_path / "many-0"
    (out / "snapshot0").mkdir(parents=True)
    (out / "snapshot0" / "results.json").write_text("{}")  # a reusable earlier output
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command))
    many_checkpoints._dissect(["--layer", "layer3"], out)
    assert not out.exists()
    assert commands[0][-4:] == ["--layer", "layer3", "--out", str(out)]


def test_missing_weights_and_missing_torch_are_named(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "absent.th"
    args = ["--workdir", str(tmp_path / "w")]
    assert many_checkpoints.main([*args, "--weights", str(missing)]) == 2
    assert f"{missing}: not found" in capsys.readouterr().err
    weights = tmp_path / "w.th"
    weights.write_bytes(b"")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "torch" else find_spec(name)
    )
    assert many_checkpoints.main([*args, "--weights", str(weights)]) == 2
    assert "torch, which is not installed" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # nothing written before the checks
