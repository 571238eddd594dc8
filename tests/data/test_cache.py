"""The decoded-label cache never reuses stale or corrupt state: every open checks the
files against their recorded checksums, the key changes when a plane is rewritten, and a
build appears under its final name only when complete."""

import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import jaxdissect.data.cache as cache
from jaxdissect import load_label_arrays, open_broden


@pytest.fixture
def dataset(probe, tmp_path):
    copy = tmp_path / "broden"
    shutil.copytree(probe.directory, copy)
    return open_broden(copy)


def _expected_planes(dataset):
    """(N, P, sh, sw) label numbers read straight from the PNGs (R + 256 * G)."""
    planes = np.zeros((dataset.num_images, 2 * len(dataset.categories), *dataset.label_size))
    for i, names in enumerate(dataset.pixel_planes):
        for k, name in enumerate(names):
            rgb = np.asarray(Image.open(dataset.directory / "images" / name)).astype(np.int64)
            planes[i, k] = rgb[..., 0] + 256 * rgb[..., 1]
    return planes


def _assert_decodes_the_pngs(labels, dataset):
    expected = _expected_planes(dataset)
    got = labels.label_planes(0, dataset.num_images)
    np.testing.assert_array_equal(got, expected[:, : got.shape[1]])
    assert not expected[:, got.shape[1] :].any()


def _folder(dataset, root):
    return root / cache.cache_key(dataset)


def test_flipped_bytes_are_detected_and_rebuilt(dataset, tmp_path, capsys):
    load_label_arrays(dataset, tmp_path / "c", progress=False)
    path = _folder(dataset, tmp_path / "c") / "slot_planes.npy"
    data = bytearray(path.read_bytes())
    for offset in range(len(data) - 64, len(data), 7):  # slot indices, past the .npy header
        data[offset] ^= 0x03
    path.write_bytes(bytes(data))
    labels = load_label_arrays(dataset, tmp_path / "c", progress=False)
    assert f"cache {path}: checksum differs" in capsys.readouterr().err
    _assert_decodes_the_pngs(labels, dataset)


def test_truncated_file_is_rebuilt(dataset, tmp_path, capsys):
    load_label_arrays(dataset, tmp_path / "c", progress=False)
    path = _folder(dataset, tmp_path / "c") / "slot_labels.npy"
    size = path.stat().st_size
    os.truncate(path, size // 2)
    labels = load_label_arrays(dataset, tmp_path / "c", progress=False)
    assert f"cache {path}: {size // 2} bytes, {size} written" in capsys.readouterr().err
    _assert_decodes_the_pngs(labels, dataset)
    assert path.stat().st_size == size


def test_a_manifest_nested_too_deeply_is_rebuilt(dataset, tmp_path, capsys):
    """json's RecursionError is no ValueError: it passed the check as a traceback."""
    load_label_arrays(dataset, tmp_path / "c", progress=False)
    path = _folder(dataset, tmp_path / "c") / cache.MANIFEST
    path.write_text("[" * 200_000 + "]" * 200_000)
    labels = load_label_arrays(dataset, tmp_path / "c", progress=False)
    assert f"cache {path}: unreadable" in capsys.readouterr().err
    _assert_decodes_the_pngs(labels, dataset)


@pytest.mark.parametrize("name", [cache.MANIFEST, "image_labels.npy"])
def test_missing_file_is_rebuilt(dataset, tmp_path, capsys, name):
    load_label_arrays(dataset, tmp_path / "c", progress=False)
    (_folder(dataset, tmp_path / "c") / name).unlink()
    labels = load_label_arrays(dataset, tmp_path / "c", progress=False)
    assert f"{name}: missing; rebuilding" in capsys.readouterr().err
    _assert_decodes_the_pngs(labels, dataset)
    assert [p.name for p in (tmp_path / "c").iterdir()] == [cache.cache_key(dataset)]


def test_plane_rewritten_with_same_size_and_mtime_gets_a_new_cache(dataset, tmp_path):
    plane = dataset.directory / "images" / dataset.pixel_planes[0][0]
    rgb = np.asarray(Image.open(plane))
    Image.fromarray(rgb).save(plane, compress_level=0)  # stored: size depends on shape only
    load_label_arrays(dataset, tmp_path / "c", progress=False)
    before = plane.stat()
    swapped = rgb.copy()
    swapped[:, :, :2] = rgb[::-1, :, :2]  # same labels, upside down
    Image.fromarray(swapped).save(plane, compress_level=0)
    os.utime(plane, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert plane.stat().st_size == before.st_size
    assert plane.stat().st_mtime_ns == before.st_mtime_ns
    labels = load_label_arrays(dataset, tmp_path / "c", progress=False)
    _assert_decodes_the_pngs(labels, dataset)


def test_warm_run_decodes_nothing(dataset, tmp_path, monkeypatch):
    first = load_label_arrays(dataset, tmp_path / "c", progress=False)

    def refuse(*args):
        raise AssertionError("a warm run decoded a plane")

    monkeypatch.setattr(cache, "decode_plane", refuse)
    second = load_label_arrays(dataset, tmp_path / "c", progress=False)
    np.testing.assert_array_equal(second.slot_planes, first.slot_planes)


def test_killed_build_leaves_nothing_that_looks_complete(dataset, tmp_path, monkeypatch):
    decode = cache.decode_plane
    calls = []

    def dies_midway(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a kill would, part-way through the planes
        return decode(*args)

    monkeypatch.setattr(cache, "decode_plane", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load_label_arrays(dataset, tmp_path / "c", progress=False)
    assert list((tmp_path / "c").iterdir()) == []  # not even its staging folder
    monkeypatch.setattr(cache, "decode_plane", decode)
    _assert_decodes_the_pngs(load_label_arrays(dataset, tmp_path / "c", progress=False), dataset)


# A build that waits, in a process of its own, until the test sends it a signal.
_SLOW_BUILD = """
import pathlib, sys, time
import jaxdissect.data.cache as cache

def write(folder):
    (folder / "image_labels.npy").write_bytes(b"half")
    print("building", flush=True)
    time.sleep(60)

cache.cached_folder(pathlib.Path(sys.argv[1]), "k", write)
"""


def _killed_build(root, signum) -> subprocess.Popen:
    """A build in a subprocess, sent ``signum`` while it writes; returns once it ended."""
    build = subprocess.Popen(
        [sys.executable, "-c", _SLOW_BUILD, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert build.stdout.readline() == "building\n"
    assert [p.name for p in root.iterdir() if p.name.startswith(".partial-")]
    build.send_signal(signum)
    build.wait(timeout=60)
    build.stdout.close()
    return build


def test_a_build_killed_by_sigterm_removes_its_staging_folder(tmp_path):
    """Issue 27: SIGTERM ended the build without running its clean-up, and its .partial-*
    folder stayed in the cache for ever."""
    build = _killed_build(tmp_path, signal.SIGTERM)
    assert build.returncode == -signal.SIGTERM  # still dies of the signal
    assert list(tmp_path.iterdir()) == []


def test_the_next_build_removes_the_folder_of_one_killed_outright(tmp_path, capsys):
    build = _killed_build(tmp_path, signal.SIGKILL)
    assert build.returncode == -signal.SIGKILL
    [left] = [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]
    mine = tmp_path / ".partial-mine"  # a folder of that name that no build made: kept
    mine.mkdir()
    (mine / "image_labels.npy").write_bytes(b"mine")

    def write(folder):
        np.save(folder / "image_labels.npy", np.arange(3))

    assert cache.cached_folder(tmp_path, "k", write) == tmp_path / "k"
    err = capsys.readouterr().err
    assert f"removing {left}, left by a cache build that was killed (pid {build.pid})" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".partial-mine", "k"]
    assert (mine / "image_labels.npy").read_bytes() == b"mine"


def test_a_running_build_s_folder_is_not_taken_for_a_killed_one(tmp_path):
    started, finish = threading.Event(), threading.Event()

    def slow(folder):
        np.save(folder / "image_labels.npy", np.arange(3))
        started.set()
        finish.wait(30)

    thread = threading.Thread(target=cache.cached_folder, args=(tmp_path, "k", slow))
    thread.start()
    started.wait(30)
    [staging] = list(tmp_path.iterdir())
    cache._reclaim_killed_builds(tmp_path)
    assert (staging / "image_labels.npy").is_file()  # its lock is held: left alone
    finish.set()
    thread.join()
    np.testing.assert_array_equal(np.load(tmp_path / "k" / "image_labels.npy"), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_concurrent_builds_agree(tmp_path):
    started = threading.Barrier(2)

    def write(folder):
        started.wait()  # both builds run at once
        np.save(folder / "a.npy", np.arange(1000))

    folders = []
    threads = [
        threading.Thread(target=lambda: folders.append(cache.cached_folder(tmp_path, "k", write)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert folders == [tmp_path / "k"] * 2
    np.testing.assert_array_equal(np.load(tmp_path / "k" / "a.npy"), np.arange(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no staging left behind


def test_a_stale_folder_keeps_files_the_cache_did_not_write(tmp_path, capsys):
    """Rebuilding removes the files a cache folder is written with, not anything else."""

    def write(folder):
        np.save(folder / "image_labels.npy", np.arange(10))

    folder = cache.cached_folder(tmp_path, "k", write)
    (folder / "notes.txt").write_bytes(b"someone's")
    (folder / "image_labels.npy").write_bytes(b"damaged")
    assert cache.cached_folder(tmp_path, "k", write) == folder
    np.testing.assert_array_equal(np.load(folder / "image_labels.npy"), np.arange(10))
    kept = [p for p in tmp_path.glob(".stale-*/k/notes.txt")]
    assert [p.read_bytes() for p in kept] == [b"someone's"]
    assert "kept" in capsys.readouterr().err


def test_an_empty_cache_variable_counts_as_unset(tmp_path, monkeypatch):
    # JAXDISSECT_CACHE= (empty) was Path(""): the cache was written into the current folder.
    monkeypatch.setenv("JAXDISSECT_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_root() == tmp_path / "xdg" / "jaxdissect"
    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "mine"))
    assert cache.default_cache_root() == tmp_path / "mine"
