"""The accelerator check runs end to end at toy sizes on the CPU, so that it is ready the
day a GPU is lent (bench/device_check.py)."""

from bench import device_check


def test_device_check_smoke_runs_every_part(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "check.txt"
    code = device_check.main(["--smoke", "--out", str(out), "--workdir", str(tmp_path / "w")])
    text = out.read_text()
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0].startswith("# python -m bench.device_check") and "device" in lines[1]
    for part in "abcde":
        assert any(line.startswith(f"({part})") for line in lines), text
    assert "xla and cpu tally.csv byte-identical" in text
    assert "FAILED" not in text
