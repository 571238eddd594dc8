"""``formulas`` and ``directions`` under jax.distributed: two processes of two fake CPU
devices each (gloo between them) write the files one process writes."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from probe_fixture import dyadic_features

from jaxdissect.cli import main

CODE = "import sys; from jaxdissect.cli import main; sys.exit(main(sys.argv[1:]))"


def _two_processes(args, outs, logs):
    """Runs ``args`` in processes 0 and 1 on localhost, process i writing to ``outs[i]``;
    returns their (exit status, stderr). Their output goes to files in ``logs``: a full
    pipe would stall one process, and the other in its collectives."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    procs, errs = [], [logs / f"process{i}.err" for i in range(2)]
    for i in range(2):
        joined = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        joined += ["--process-id", str(i), "--out", str(outs[i])]
        with open(errs[i], "w") as err:
            command = [sys.executable, "-c", CODE, *args, *joined]
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err))
    try:
        codes = [proc.wait(timeout=120) for proc in procs]
    finally:  # a process stuck in a collective is ended, not left behind
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [(code, err.read_text()) for code, err in zip(codes, errs, strict=True)]


def _common(command, probe, tmp_path):
    np.save(tmp_path / "f.npy", dyadic_features(12, (4, 4, 6)))
    return [command, "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--quantile", "0.05", "--kernel", "xla", "--no-progress"]  # fmt: skip


def _same_outputs(one, two, kind, binary):
    """The files of two runs agree byte for byte, but the wall times in OUT/<kind>.json
    and the device count in the fingerprint."""
    for suffix in binary:
        assert (one / f"{kind}.{suffix}").read_bytes() == (two / f"{kind}.{suffix}").read_bytes()
    summaries = [json.loads((out / f"{kind}.json").read_text()) for out in (one, two)]
    for summary in summaries:
        summary.pop("seconds")
    assert summaries[0] == summaries[1]
    prints = [json.loads((out / f"{kind}.fingerprint.json").read_text()) for out in (one, two)]
    assert (prints[0].pop("devices"), prints[1].pop("devices")) == (1, 4)
    assert prints[0] == prints[1]


def test_formulas_in_two_processes_equal_one(probe, tmp_path, capsys):
    common = [*_common("formulas", probe, tmp_path), "--length", "3", "--beam", "3",
              "--labels-per-unit", "4"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    multi = tmp_path / "multi"
    for code, err in _two_processes(common, [multi, multi], tmp_path):
        assert code == 0, err[-2000:]
    _same_outputs(tmp_path / "one", multi, "formulas", ("csv", "npz", "html"))
    # A rerun reuses the finished run on process 0's word; a process that cannot read it
    # (OUT not shared) says so rather than wait for collectives process 0 never starts.
    published = sorted(p.name for p in (multi / ".jaxdissect").iterdir())
    (zero, _), (one, err) = _two_processes(common, [multi, tmp_path / "elsewhere"], tmp_path)
    assert zero == 0 and one == 2
    assert "cannot read the finished formulas run that process 0 reuses" in err
    assert sorted(p.name for p in (multi / ".jaxdissect").iterdir()) == published


def test_directions_in_two_processes_equal_one(probe, tmp_path, capsys):
    common = [*_common("directions", probe, tmp_path), "--min-pixels", "8", "--epochs", "2",
              "--step-images", "4"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    multi = tmp_path / "multi"
    for code, err in _two_processes(common, [multi, multi], tmp_path):
        assert code == 0, err[-2000:]
    _same_outputs(tmp_path / "one", multi, "directions", ("csv", "npz", "html"))


@pytest.mark.parametrize("command", ["formulas", "directions"])
def test_cpu_kernel_in_several_processes_is_refused(probe, tmp_path, capsys, command):
    """Their CPU kernel (Numba loops, and the dissection's CPU passes) counts in one
    process: refused before joining the others."""
    args = _common(command, probe, tmp_path)
    args[args.index("xla")] = "cpu"
    args += ["--out", str(tmp_path / "out"), "--coordinator", "localhost:1234"]
    args += ["--num-processes", "2", "--process-id", "0"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        "jaxdissect: error: --kernel 'cpu' runs in one process: use --kernel 'xla' (or "
        "'auto') under jax.distributed"
    )
    assert not (tmp_path / "out").exists()
