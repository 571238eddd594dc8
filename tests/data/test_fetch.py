"""``jaxdissect fetch``: resumable downloads, safe extraction, and the paper's example (fetch
Broden, fetch the Places365 ResNet-18, dissect layer4) against a server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from http_fixture import Server
from probe_fixture import make_probe
from test_torch_weights import _state, _write

from jaxdissect.cli import main
from jaxdissect.data.archive import ArchiveError, extract_zip
from jaxdissect.data.download import discard_partial, download, partial_path
from jaxdissect.data.fetch import MANIFEST, SOURCES, fetch
from jaxdissect.errors import DissectError


@pytest.fixture
def server():
    served = Server()
    yield served
    served.close()


def _zip_folder(folder: Path, path: Path, top: str = "broden1_224") -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, f"{top}/{file.relative_to(folder).as_posix()}")
    return path.read_bytes()


@pytest.fixture(scope="module")
def mini_broden(tmp_path_factory) -> bytes:
    """A miniature Broden zip (12 images, every corner of the format) under broden1_224/."""
    root = tmp_path_factory.mktemp("mini")
    probe = make_probe(root / "broden")
    return _zip_folder(probe.directory, root / "broden1_224.zip")


def _blob(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes()


# Downloads


def test_cut_off_transfer_resumes_in_the_same_run(server, tmp_path):
    data = _blob(3_000_000)
    server.files["big.bin"] = data
    server.cut_after = [1_000_000]
    waits = []
    part = download(
        server.url("big.bin"),
        tmp_path / "big.bin",
        max_bytes=10**8,
        progress=False,
        sleep=waits.append,
    )
    assert part.read_bytes() == data
    assert [s.status for s in server.log] == [200, 206]
    assert server.log[1].range == "bytes=1000000-"
    assert server.bytes_sent == len(data)  # nothing sent twice
    assert waits == [1.0]  # one backoff


def test_cut_off_transfer_resumes_in_the_next_run(server, tmp_path, capsys):
    data = _blob(2_000_000, seed=1)
    server.files["w.pth.tar"] = data
    server.cut_after = [700_000]
    target = tmp_path / "w.pth.tar"
    with pytest.raises(DissectError, match="run the same command again to resume"):
        download(server.url("w.pth.tar"), target, max_bytes=10**8, retries=0, progress=False)
    assert partial_path(target).read_bytes() == data[:700_000]
    assert not target.exists()
    part = download(server.url("w.pth.tar"), target, max_bytes=10**8, progress=True)
    assert part.read_bytes() == data
    assert server.log[-1].range == "bytes=700000-" and server.log[-1].status == 206
    assert server.bytes_sent == len(data)
    assert "B/s" in capsys.readouterr().err  # the progress bar shows bytes and a rate


def test_server_without_range_restarts_cleanly(server, tmp_path):
    data = _blob(1_500_000, seed=2)
    server.files["f.zip"] = data
    server.ranges = False
    server.cut_after = [600_000]
    part = download(
        server.url("f.zip"), tmp_path / "f.zip", max_bytes=10**8, progress=False, sleep=lambda s: 0
    )
    assert part.read_bytes() == data  # restarted from byte 0, not appended
    assert server.log[1].range == "bytes=600000-" and server.log[1].status == 200


def test_a_partial_file_of_another_url_is_not_resumed(server, tmp_path):
    data = _blob(100_000, seed=3)
    server.files["a"] = data
    target = tmp_path / "a"
    partial_path(target).write_bytes(b"x" * 50_000)  # ours, of another URL
    (tmp_path / "a.part.json").write_text(json.dumps({"url": server.url("b"), "total": 10**6}))
    assert download(server.url("a"), target, max_bytes=10**8, progress=False).read_bytes() == data
    assert server.log[0].range is None
    assert json.loads((tmp_path / "a.part.json").read_text())["url"] == server.url("a")


@pytest.mark.parametrize("state", [None, "not json", '["a list"]'])
def test_a_partial_file_no_state_of_ours_records_is_kept(server, tmp_path, capsys, state):
    """Issue 27: a user's DIR/x.zip.part, with no state file of ours (or one that is not
    ours) beside it, is neither deleted nor overwritten: fetch stops, naming it."""
    server.files["a.zip"] = _blob(1000, seed=4)
    part = tmp_path / "a.zip.part"
    part.write_bytes(b"a user's file")
    if state is not None:
        (tmp_path / "a.zip.part.json").write_text(state)
    with pytest.raises(DissectError, match=r"a\.zip\.part: not a download of jaxdissect's"):
        download(server.url("a.zip"), tmp_path / "a.zip", max_bytes=10**8, progress=False)
    assert part.read_bytes() == b"a user's file"
    assert server.log == []  # refused before any request
    link = tmp_path / "b.zip.part"
    link.symlink_to(part)  # a link planted there: neither followed nor removed
    with pytest.raises(DissectError, match=r"b\.zip\.part: not a download of jaxdissect's"):
        download(server.url("a.zip"), tmp_path / "b.zip", max_bytes=10**8, progress=False)
    assert link.is_symlink() and part.read_bytes() == b"a user's file"
    discard_partial(tmp_path / "a.zip")
    assert part.read_bytes() == b"a user's file"


def test_missing_file_and_oversized_file_are_refused(server, tmp_path):
    with pytest.raises(DissectError, match="HTTP 404"):
        download(server.url("nothing"), tmp_path / "n", max_bytes=10, progress=False)
    server.files["big"] = _blob(1000)
    with pytest.raises(DissectError, match="1000 bytes, more than the 999 allowed"):
        download(server.url("big"), tmp_path / "big", max_bytes=999, progress=False)


# Safe extraction


def _entry(name: str, mode: int | None = None) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.create_system = 3
        info.external_attr = mode << 16
    return info


UNSAFE = {
    "parent": ([(_entry("broden1_224/../../evil.txt"), b"x")], "leaves the destination"),
    "absolute": ([(_entry("/tmp/evil.txt"), b"x")], "absolute"),
    "drive": ([(_entry("C:/evil.txt"), b"x")], "absolute"),
    "symlink": (
        [(_entry("broden1_224/label.csv", stat.S_IFLNK | 0o777), b"/etc/passwd")],
        "symbolic link",
    ),
    "device": ([(_entry("broden1_224/dev", stat.S_IFCHR | 0o600), b"")], "character device"),
    "fifo": ([(_entry("broden1_224/pipe", stat.S_IFIFO | 0o600), b"")], "FIFO"),
    "ratio": ([(_entry("broden1_224/zeros.bin"), bytes(4 << 20))], "expands"),
    "file_and_folder": (
        [(_entry("broden1_224/a"), b"x"), (_entry("broden1_224/a/b"), b"y")],
        "both a file and a folder",
    ),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused_and_nothing_is_written(tmp_path, case, capsys):
    entries, message = UNSAFE[case]
    source = tmp_path / "bad.zip"
    with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("broden1_224/index.csv", "image\n")
        for info, data in entries:
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    data_dir = tmp_path / "data"
    code = main(["fetch", "broden1_224", "--dir", str(data_dir), "--from", str(source)])
    error = capsys.readouterr().err
    assert code == 2
    assert message in error and len(error.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.zip", "data"]  # nothing else
    assert source.exists()  # the user's file is theirs


def test_size_limit_counts_what_is_inflated(tmp_path):
    source = tmp_path / "a.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("top/one", _blob(600))
        archive.writestr("top/two", _blob(600))
    with pytest.raises(ArchiveError, match="1200 bytes uncompressed, more than the 1000"):
        extract_zip(source, tmp_path / "out", max_bytes=1000, progress=False)
    assert not (tmp_path / "out").exists()
    extract_zip(source, tmp_path / "out", max_bytes=1200, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one", "two"]


def _corrupt(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) * 2 // 3]
    # Flip a byte inside the largest entry's compressed data: its CRC no longer matches.
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    offset += info.compress_size // 2
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


@pytest.mark.parametrize("how", ["crc", "truncated"])
def test_corrupt_download_is_refused_and_removed(server, tmp_path, mini_broden, how, capsys):
    server.files["broden1_224.zip"] = _corrupt(mini_broden, how)
    data_dir = tmp_path / "data"
    args = ["fetch", "broden1_224", "--dir", str(data_dir), "--no-progress"]
    code = main([*args, "--url", server.url("broden1_224.zip")])
    error = capsys.readouterr().err
    assert code == 2 and len(error.strip().splitlines()) == 1
    assert "corrupt or truncated zip archive" in error
    # Named as the file fetched, not as its partial file (issue 27).
    url = server.url("broden1_224.zip")
    assert f"error: {data_dir / 'broden1_224.zip'} (downloaded from {url}): " in error
    assert ".part" not in error and error.rstrip().endswith("the download was removed")
    assert sorted(p.name for p in data_dir.iterdir()) == []  # no folder, staging or zip
    # The same command then downloads afresh.
    server.files["broden1_224.zip"] = mini_broden
    assert main([*args, "--url", server.url("broden1_224.zip")]) == 0
    assert (data_dir / "broden1_224" / "index.csv").is_file()


# The paper's example, end to end


def write_places365_checkpoint(path: Path, bias: np.ndarray) -> None:
    """What places365's training script saved: the pre-1.6 format, ``{'state_dict': ...}``
    with DataParallel's ``module.`` names (torchvision's ResNet-18, 365 classes), here with a
    zero fc weight so that the logits equal ``bias``."""
    rng = np.random.default_rng(0)
    arrays = {"conv1.weight": rng.normal(0, 0.1, (64, 3, 7, 7))}

    def bn(prefix, width):
        arrays[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, width)
        arrays[f"{prefix}.bias"] = rng.normal(0, 0.1, width)
        arrays[f"{prefix}.running_mean"] = rng.normal(0, 0.1, width)
        arrays[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, width)
        arrays[f"{prefix}.num_batches_tracked"] = np.array(1000, np.int64)

    bn("bn1", 64)
    cin = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            name = f"layer{stage}.{block}"
            arrays[f"{name}.conv1.weight"] = rng.normal(0, 0.05, (width, cin, 3, 3))
            bn(f"{name}.bn1", width)
            arrays[f"{name}.conv2.weight"] = rng.normal(0, 0.05, (width, width, 3, 3))
            bn(f"{name}.bn2", width)
            if block == 0 and stage > 1:
                arrays[f"{name}.downsample.0.weight"] = rng.normal(0, 0.05, (width, cin, 1, 1))
                bn(f"{name}.downsample.1", width)
            cin = width
    arrays["fc.weight"] = np.zeros((365, 512))
    arrays["fc.bias"] = bias
    arrays = {
        f"module.{k}": v if v.dtype == np.int64 else v.astype(np.float32) for k, v in arrays.items()
    }
    state_dict, storages = _state(arrays, legacy=True)
    checkpoint = {"epoch": 90, "arch": "resnet18", "state_dict": state_dict, "best_prec1": 54.7}
    _write(path, checkpoint, storages, "legacy")


def test_the_papers_example_runs_on_local_copies(server, tmp_path, mini_broden, capsys):
    bias = np.linspace(-1, 1, 365).astype(np.float32)
    checkpoint = tmp_path / "served.pth.tar"
    write_places365_checkpoint(checkpoint, bias)
    server.files["broden1_224.zip"] = mini_broden
    server.files["resnet18_places365.pth.tar"] = checkpoint.read_bytes()
    data = tmp_path / "data"

    # 1. fetch Broden (cut off half way: resumed in the same run)
    server.cut_after = [len(mini_broden) // 2]
    assert (
        main(["fetch", "broden1_224", "--dir", str(data), "--url", server.url("broden1_224.zip")])
        == 0
    )
    out = capsys.readouterr().out
    assert f"SHA-256 {hashlib.sha256(mini_broden).hexdigest()} recorded" in out
    assert sorted(p.name for p in data.iterdir()) == ["broden1_224", MANIFEST]
    assert server.bytes_sent == len(mini_broden)
    # 2. fetch the Places365 ResNet-18
    url = server.url("resnet18_places365.pth.tar")
    assert main(["fetch", "resnet18_places365", "--dir", str(data), "--url", url]) == 0
    weights = data / "resnet18_places365.pth.tar"
    assert weights.read_bytes() == checkpoint.read_bytes()
    manifest = json.loads((data / MANIFEST).read_text())
    assert (
        manifest["resnet18_places365"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    # 3. dissect layer4 with NetDissect-Lite's settings
    out_dir = tmp_path / "out"
    args = ["dissect", "--dataset", str(data / "broden1_224"), "--model", "zoo:resnet18",
            "--weights", str(weights), "--layer", "layer4", "--out", str(out_dir),
            "--quantile", "0.005", "--iou-threshold", "0.04", "--union", "lite",
            "--categories", "object,part,scene,texture,color", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    rows = (out_dir / "tally.csv").read_text().splitlines()
    assert rows[0].startswith("unit,category,label,score")
    assert len(rows) == 1 + 512  # layer4's units
    assert (out_dir / "report.html").is_file()
    # The weights are the checkpoint's: a zero fc weight gives logits equal to its bias.
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8))
    logits = tmp_path / "logits.npy"
    assert main(["features", "--model", "zoo:resnet18", "--weights", str(weights),
                 "--layer", "logits", "--images", str(images), "--out", str(logits)]) == 0  # fmt: skip
    np.testing.assert_array_equal(np.load(logits), np.broadcast_to(bias, (3, 365)))

    # Again: nothing to do. Offline, from the files the user has: the same checks.
    capsys.readouterr()
    assert main(["fetch", "broden1_224", "--dir", str(data)]) == 0
    assert "already there" in capsys.readouterr().out
    requests = len(server.log)
    offline = tmp_path / "offline"
    (offline).mkdir()
    (offline / MANIFEST).write_text((data / MANIFEST).read_text())
    zip_copy = tmp_path / "mine.zip"
    zip_copy.write_bytes(mini_broden)
    assert main(["fetch", "broden1_224", "--dir", str(offline), "--from", str(zip_copy)]) == 0
    assert main(["fetch", "resnet18_places365", "--dir", str(offline), "--from", str(weights)]) == 0
    assert len(server.log) == requests  # no request made
    assert (offline / "broden1_224" / "index.csv").read_bytes() == (
        data / "broden1_224" / "index.csv"
    ).read_bytes()
    assert zip_copy.exists()


def test_a_recorded_hash_is_verified_thereafter(server, tmp_path, mini_broden, capsys):
    data = tmp_path / "data"
    server.files["b.zip"] = mini_broden
    assert fetch("broden1_224", data, url=server.url("b.zip"), progress=False).recorded
    renamed = tmp_path / "renamed.zip"
    with zipfile.ZipFile(renamed, "w") as archive:
        archive.writestr("broden1_224/index.csv", "image\n")
    shutil.rmtree(data / "broden1_224")
    code = main(["fetch", "broden1_224", "--dir", str(data), "--from", str(renamed)])
    error = capsys.readouterr().err
    assert code == 2
    assert f"differs from {hashlib.sha256(mini_broden).hexdigest()}" in error
    assert "recorded at the first fetch" in error
    assert not (data / "broden1_224").exists()


def test_unknown_name_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        main(["fetch", "broden2", "--dir", "x"])
    assert "broden1_224" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["notaurl", "ftp://host/file.zip", "http://", "/tmp/x.zip"])
def test_a_url_that_is_not_http_is_refused_naming_the_flag(tmp_path, url, capsys):
    """urllib raised ValueError("unknown url type") through the CLI as a traceback; an
    ftp:// or host-less URL retried six times with backoff before failing."""
    assert main(["fetch", "broden1_224", "--dir", str(tmp_path), "--url", url]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"jaxdissect: error: --url {url!r}: not an http:// or https:// URL with a host"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_leftover_staging_folder_is_removed_only_when_ours(tmp_path, mini_broden, capsys):
    source = tmp_path / "mine.zip"
    source.write_bytes(mini_broden)
    data = tmp_path / "data"
    staging = data / ".broden1_224.staging"
    staging.mkdir(parents=True)
    (staging / "someone-elses.txt").write_text("keep")
    args = ["fetch", "broden1_224", "--dir", str(data), "--from", str(source), "--no-progress"]
    assert main(args) == 2
    assert "is not a jaxdissect staging folder" in capsys.readouterr().err
    assert (staging / "someone-elses.txt").read_text() == "keep"
    (staging / "someone-elses.txt").unlink()
    (staging / ".jaxdissect-staging").touch()  # a run killed while extracting left it
    (staging / "index.csv").write_text("half")
    assert main(args) == 0
    assert not staging.exists()
    assert sorted(p.name for p in data.iterdir()) == ["broden1_224", MANIFEST]
    shutil.rmtree(data / "broden1_224")
    (data / "broden1_224").mkdir()  # not a Broden folder: named, not overwritten
    assert main(args) == 2
    assert "not a Broden folder: no index.csv, category.csv, label.csv" in capsys.readouterr().err


# What is already in DIR, and links planted there (issue 27)


def _tiny_checkpoint(path: Path) -> bytes:
    """A checkpoint fetch accepts (it has an fc.weight), in the pre-1.6 format."""
    state_dict, storages = _state({"fc.weight": np.zeros((2, 3), np.float32)}, legacy=True)
    _write(path, {"state_dict": state_dict}, storages, "legacy")
    return path.read_bytes()


@pytest.mark.parametrize("recorded", [False, True])
def test_a_checkpoint_already_there_is_checked_not_trusted(tmp_path, capsys, recorded):
    """A garbage file at DIR/resnet18_places365.pth.tar with no hash to check it against
    was reported "already there" (exit 0): now refused in one line, and kept."""
    data = tmp_path / "data"
    data.mkdir()
    if recorded:
        (data / MANIFEST).write_text(json.dumps({"resnet18_places365": {"sha256": "0" * 64}}))
    garbage = data / "resnet18_places365.pth.tar"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["fetch", "resnet18_places365", "--dir", str(data), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert ("differs from " + "0" * 64 if recorded else "records no fetch of") in error
    assert garbage.read_bytes() == b"not a checkpoint"


@pytest.mark.parametrize(
    "recorded, served, reason",
    [
        # A hash recorded at the first fetch that the download does not have.
        ("0" * 64, "checkpoint", "SHA-256 .* differs from 0{64} \\(recorded at the first fetch"),
        # No hash yet, and the download is not a checkpoint.
        (None, "garbage", "not a readable PyTorch checkpoint"),
    ],
)
def test_a_download_failing_its_check_is_named_as_the_file_fetched(
    server, tmp_path, capsys, recorded, served, reason
):
    """Issue 27: the error named DIR/resnet18_places365.pth.tar.part (or only the URL), a file
    the user never asked for and that was already removed."""
    data = tmp_path / "data"
    data.mkdir()
    if recorded:
        (data / MANIFEST).write_text(json.dumps({"resnet18_places365": {"sha256": recorded}}))
    body = _tiny_checkpoint(tmp_path / "c") if served == "checkpoint" else b"not a checkpoint"
    server.files["r.pth.tar"] = body
    url = server.url("r.pth.tar")
    args = ["fetch", "resnet18_places365", "--dir", str(data), "--url", url, "--no-progress"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    target = data / "resnet18_places365.pth.tar"
    assert re.fullmatch(
        re.escape(f"jaxdissect: error: {target} (downloaded from {url}): ")
        + f"{reason}.*; the download was removed",
        error,
    ), error
    assert ".part" not in error
    assert sorted(p.name for p in data.iterdir()) == ([MANIFEST] if recorded else [])


def test_a_download_matching_its_recorded_hash_but_unreadable_says_where_it_is_kept(
    server, tmp_path, capsys
):
    data = tmp_path / "data"
    data.mkdir()
    body = b"not a checkpoint, but the bytes recorded"
    record = {"resnet18_places365": {"sha256": hashlib.sha256(body).hexdigest()}}
    (data / MANIFEST).write_text(json.dumps(record))
    server.files["r.pth.tar"] = body
    url = server.url("r.pth.tar")
    args = ["fetch", "resnet18_places365", "--dir", str(data), "--url", url, "--no-progress"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    target = data / "resnet18_places365.pth.tar"
    assert error.startswith(f"jaxdissect: error: {target} (downloaded from {url}): not a ")
    assert error.endswith(f"; its bytes are kept in {partial_path(target)}")
    assert partial_path(target).read_bytes() == body


def test_leftovers_of_earlier_runs_are_named_once_the_fetch_is_done(server, tmp_path, capsys):
    """Issue 27: a download's .part/.part.json pair outlived a fetch completed another way,
    and a killed write's temporary file stayed, both unmentioned."""
    data = tmp_path / "data"
    checkpoint = tmp_path / "mine.pth.tar"
    body = _tiny_checkpoint(checkpoint)
    server.files["r.pth.tar"] = body
    server.cut_after = [len(body) // 2]
    url = server.url("r.pth.tar")
    args = ["fetch", "resnet18_places365", "--dir", str(data), "--no-progress"]
    assert main([*args, "--url", url, "--retries", "0"]) == 2  # cut off: kept to resume
    part = data / "resnet18_places365.pth.tar.part"
    assert part.is_file() and part.with_name(part.name + ".json").is_file()
    capsys.readouterr()
    temporary = data / f".{MANIFEST}.k1ll3d00.partial"  # as replace_file names its own
    temporary.write_text("{")
    assert main([*args, "--from", str(checkpoint)]) == 0  # fetched another way
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[:2] == [
        f"jaxdissect: removed {part}, left by an interrupted download "
        f"({data / 'resnet18_places365.pth.tar'} is fetched)",
        f"jaxdissect: removed {part}.json, left by an interrupted download "
        f"({data / 'resnet18_places365.pth.tar'} is fetched)",
    ]
    assert len(lines) == 3 and temporary.name in lines[2] and "not removed" in lines[2]
    assert sorted(p.name for p in data.iterdir()) == sorted(
        [MANIFEST, "resnet18_places365.pth.tar", temporary.name]
    )
    # A .part no state of ours records is named, never removed, even once fetched.
    part.write_bytes(b"someone's")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{part}: not needed" in err and "not removed" in err
    assert part.read_bytes() == b"someone's"
    # A failed download's pair is not a leftover: the same command resumes it, silently.
    (data / "resnet18_places365.pth.tar").unlink()
    part.unlink()
    temporary.unlink()
    server.cut_after = [len(body) // 2]
    assert main([*args, "--url", url, "--retries", "0"]) == 2
    capsys.readouterr()
    assert main([*args, "--url", url]) == 0
    assert capsys.readouterr().err == ""


def test_a_broden_folder_no_fetch_recorded_is_not_called_already_there(tmp_path, capsys):
    folder = tmp_path / "data" / "broden1_224"
    folder.mkdir(parents=True)
    for name in ("index.csv", "category.csv", "label.csv"):
        (folder / name).write_text("garbage")
    assert main(["fetch", "broden1_224", "--dir", str(tmp_path / "data")]) == 2
    error = capsys.readouterr().err
    assert "already there, but" in error and "records no fetch of broden1_224" in error
    assert sorted(p.name for p in folder.iterdir()) == ["category.csv", "index.csv", "label.csv"]


def test_a_zip_already_in_dir_is_the_users_never_removed(tmp_path, mini_broden, capsys):
    """DIR/broden1_224.zip was taken for an earlier run's download: removed after
    extracting, and removed when it was garbage. It is checked and used, and kept."""
    data = tmp_path / "data"
    data.mkdir()
    archive = data / "broden1_224.zip"
    archive.write_bytes(b"garbage, not a zip")
    assert main(["fetch", "broden1_224", "--dir", str(data), "--no-progress"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert archive.read_bytes() == b"garbage, not a zip"
    archive.write_bytes(mini_broden)
    assert main(["fetch", "broden1_224", "--dir", str(data), "--no-progress"]) == 0
    assert archive.read_bytes() == mini_broden
    assert (data / "broden1_224" / "index.csv").is_file()


def test_fetch_from_never_writes_through_a_link_planted_in_dir(tmp_path):
    """--from copied with shutil.copyfile to DIR/<file>.part and wrote the manifest through
    DIR/.jaxdissect-fetch.json.tmp: a link planted at either led it into another file."""
    source = tmp_path / "mine.pth.tar"
    checkpoint = _tiny_checkpoint(source)
    victim = tmp_path / "victim"
    victim.write_bytes(b"someone else's")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("resnet18_places365.pth.tar.part", f".{MANIFEST}.tmp"):
        (data / name).symlink_to(victim)
    fetch("resnet18_places365", data, from_file=source, progress=False)
    assert victim.read_bytes() == b"someone else's"
    assert (data / "resnet18_places365.pth.tar").read_bytes() == checkpoint
    assert not (data / "resnet18_places365.pth.tar").is_symlink()
    assert "resnet18_places365" in json.loads((data / MANIFEST).read_text())


def test_a_download_never_writes_through_a_link_planted_for_its_state(server, tmp_path):
    server.files["a.zip"] = data = _blob(1000, seed=5)
    victim = tmp_path / "victim"
    victim.write_bytes(b"someone else's")
    (tmp_path / "a.zip.part.tmp").symlink_to(victim)  # where the state was written first
    part = download(server.url("a.zip"), tmp_path / "a.zip", max_bytes=10**8, progress=False)
    assert part.read_bytes() == data and victim.read_bytes() == b"someone else's"


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_recorded_partial_file_swapped_for_a_link_is_not_resumed_into(
    server, tmp_path, capsys, how
):
    """download reopened a recorded .part for resuming without O_NOFOLLOW: a link put in its
    place was appended to. Now refused in one line, the linked file untouched."""
    server.files["a.zip"] = _blob(100_000, seed=6)
    server.cut_after = [40_000]
    target = tmp_path / "data" / "a.zip"
    with pytest.raises(DissectError, match="run the same command again"):
        download(server.url("a.zip"), target, max_bytes=10**8, retries=0, progress=False)
    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * 40_000)
    part = partial_path(target)
    part.unlink()
    part.symlink_to(victim) if how == "symlink" else part.hardlink_to(victim)
    with pytest.raises(DissectError, match=r"a\.zip\.part: (a symbolic link|not a plain file)"):
        download(server.url("a.zip"), target, max_bytes=10**8, retries=0, progress=False)
    assert victim.read_bytes() == b"v" * 40_000


@pytest.mark.parametrize("fifo", [MANIFEST, "resnet18_places365.pth.tar", "a.part.json"])
def test_a_fifo_where_fetch_reads_a_file_is_refused_not_waited_on(server, tmp_path, fifo):
    """fetch read DIR's manifest, the file already there and a download's state file
    without checking they were files: a FIFO there blocked it for ever."""
    os.mkfifo(tmp_path / fifo)
    if fifo == "a.part.json":
        partial_path(tmp_path / "a").write_bytes(b"x")
        with pytest.raises(DissectError, match=r"a\.part: not a download of jaxdissect's"):
            download(server.url("a"), tmp_path / "a", max_bytes=10, progress=False)
        return
    if fifo == MANIFEST:
        (tmp_path / "resnet18_places365.pth.tar").write_bytes(b"already there")
    else:
        (tmp_path / MANIFEST).write_text(json.dumps({"resnet18_places365": {"sha256": "0"}}))
    with pytest.raises(DissectError, match=re.escape(f"{tmp_path / fifo}: not a file")):
        fetch("resnet18_places365", tmp_path, retries=0, progress=False)


def test_fetch_from_a_name_with_a_line_break_fails_in_one_line(tmp_path, capsys):
    source = tmp_path / "a\nb.zip"
    assert main(["fetch", "broden1_224", "--dir", str(tmp_path / "d"), "--from", str(source)]) == 2
    error = capsys.readouterr().err
    assert error == f"jaxdissect: error: --from {tmp_path}/a\\nb.zip: no such file\n"


def test_a_second_fetch_of_the_same_name_into_dir_is_refused_while_one_runs(server, tmp_path):
    """Two fetches of one name into one DIR wrote into one partial file, and one could take
    the other's download for a leftover: the second is refused, naming the first's pid."""
    from jaxdissect.outdir import held_lock

    source = SOURCES["broden1_224"]
    lock = tmp_path / f".{source.filename}.lock"
    with held_lock(lock, "held", "cannot open"):
        with pytest.raises(DissectError, match=rf"fetching broden1_224 .*pid {os.getpid()}"):
            fetch("broden1_224", tmp_path, url=server.url("x"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [lock.name]  # the holder's
    server.files["x"] = b"not a zip"
    with pytest.raises(DissectError, match=r"broden1_224\.zip"):
        fetch("broden1_224", tmp_path, url=server.url("x"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # its lock went with it


def test_a_dir_that_is_a_file_is_named_so(tmp_path, capsys):
    """--dir naming a file failed as "DIR: File exists", which said nothing of a folder."""
    (tmp_path / "d").write_text("mine\n")
    assert main(["fetch", "broden1_224", "--dir", str(tmp_path / "d"), "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"jaxdissect: error: {tmp_path / 'd'}: exists and is not a folder to fetch into\n"
    )
    assert (tmp_path / "d").read_text() == "mine\n"


@pytest.mark.parametrize("recorded", [None, 5, ["a"]])
def test_a_manifest_recording_no_hash_checks_nothing_and_is_refused(tmp_path, recorded):
    """A manifest forged to record a checkpoint with "sha256": null made any file at its
    name "already there", unchecked; one recording a number was taken as a hash."""
    (tmp_path / MANIFEST).write_text(json.dumps({"resnet18_places365": {"sha256": recorded}}))
    (tmp_path / "resnet18_places365.pth.tar").write_bytes(b"not a checkpoint")
    problem = "records no fetch" if recorded is None else "is not a SHA-256"
    with pytest.raises(DissectError, match=problem):
        fetch("resnet18_places365", tmp_path, progress=False)
    assert (tmp_path / "resnet18_places365.pth.tar").read_bytes() == b"not a checkpoint"
