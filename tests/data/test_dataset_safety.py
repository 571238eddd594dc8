"""A Broden folder is read as written or refused: paths stay inside images/, counts are
never silently different, sizes are bounded before anything is allocated, and the writer
and the synthetic world write what any Broden reader accepts."""

import csv
import os
import re
import shutil
import struct
import threading
import zlib
from collections import namedtuple

import numpy as np
import pytest
from PIL import Image, ImageFile

from jaxdissect import BrodenFormatError, load_label_arrays, open_broden
from jaxdissect.cli import main
from jaxdissect.data.broden_writer import ProbeImage, write_broden
from jaxdissect.errors import DissectError


@pytest.fixture
def broken(probe, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(probe.directory, copy)
    return copy


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _write_rows(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _set_field(directory, name, line, column, value):
    """Sets field ``column`` of ``line`` (1-based, the header is line 1) of a CSV file."""
    rows = _rows(directory / name)
    rows[line - 1][rows[0].index(column)] = value
    _write_rows(directory / name, rows)


def _first_plane_field(directory):
    """(column, plane path) of the first pixel-level plane listed on index.csv line 2."""
    header, row = _rows(directory / "index.csv")[:2]
    for column, value in zip(header, row, strict=True):
        if value.endswith(".png"):
            return column, value.split(";")[0]
    raise AssertionError("no plane on line 2")


# Paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_plane_path_outside_images_is_refused(broken, tmp_path, kind):
    column, plane = _first_plane_field(broken)
    outside = tmp_path / "outside.png"
    shutil.copy(broken / "images" / plane, outside)
    path = str(outside) if kind == "absolute" else "../../outside.png"
    _set_field(broken, "index.csv", 2, column, path)
    with pytest.raises(BrodenFormatError, match=rf"index\.csv, line 2, field '{column}': '.*"):
        open_broden(broken)


def test_image_path_outside_images_is_refused(broken):
    _set_field(broken, "index.csv", 3, "image", "../index.csv")
    with pytest.raises(BrodenFormatError, match=r"index\.csv, line 3, field 'image': '\.\./"):
        open_broden(broken)


def test_plane_symlinked_outside_images_is_refused(broken, tmp_path):
    column, plane = _first_plane_field(broken)
    outside = tmp_path / "outside.png"
    shutil.copy(broken / "images" / plane, outside)
    (broken / "images" / "link.png").symlink_to(outside)
    _set_field(broken, "index.csv", 2, column, "link.png")
    dataset = open_broden(broken)
    with pytest.raises(BrodenFormatError, match=r"index\.csv, line 2: label plane 'link\.png' "):
        load_label_arrays(dataset, progress=False)


def test_symlink_inside_images_is_followed(broken):
    column, plane = _first_plane_field(broken)
    (broken / "images" / "link.png").symlink_to(broken / "images" / plane)
    _set_field(broken, "index.csv", 2, column, "link.png")
    dataset = open_broden(broken)
    slot = dataset.pixel_planes[0].index("link.png")
    labels = load_label_arrays(dataset, progress=False)
    expected = np.asarray(Image.open(broken / "images" / plane)).astype(np.int64)
    np.testing.assert_array_equal(
        labels.label_planes(0, 1)[0, slot], expected[..., 0] + 256 * expected[..., 1]
    )


def test_fifo_plane_is_refused_not_waited_on(broken):
    column, _ = _first_plane_field(broken)
    fifo = broken / "images" / "fifo.png"
    os.mkfifo(fifo)
    _set_field(broken, "index.csv", 2, column, "fifo.png")
    dataset = open_broden(broken)
    outcome = []

    def load():
        try:
            load_label_arrays(dataset, progress=False)
        except BrodenFormatError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():  # blocked opening the FIFO: release it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
        pytest.fail("the reader waited on a FIFO")
    assert len(outcome) == 1 and "fifo.png: label plane is not a regular file" in outcome[0]


def test_fifo_csv_is_refused(broken):
    (broken / "label.csv").unlink()
    os.mkfifo(broken / "label.csv")
    with pytest.raises(BrodenFormatError, match=r"label\.csv: not a regular file"):
        open_broden(broken)


# Counts -------------------------------------------------------------------------------


def test_category_listed_twice_is_refused(broken):
    rows = _rows(broken / "category.csv")
    _write_rows(broken / "category.csv", [*rows, rows[2]])
    with pytest.raises(BrodenFormatError, match=rf"category\.csv, line {len(rows) + 1}: category"):
        open_broden(broken)


def test_repeated_column_is_refused(broken):
    rows = _rows(broken / "index.csv")
    rows[0][-1] = rows[0][-2]
    _write_rows(broken / "index.csv", rows)
    with pytest.raises(BrodenFormatError, match=rf"index\.csv: column\(s\) {rows[0][-1]} appear"):
        open_broden(broken)


@pytest.mark.parametrize("name", ["index.csv", "label.csv", "c_object.csv"])
def test_row_missing_trailing_fields_is_refused(broken, name):
    rows = _rows(broken / name)
    rows[2] = rows[2][:-1]
    _write_rows(broken / name, rows)
    with pytest.raises(BrodenFormatError, match=rf"{name}, line 3: fewer fields than the header"):
        open_broden(broken)


def test_label_or_plane_repeated_in_a_row_counts_once(broken):
    column, plane = _first_plane_field(broken)
    _set_field(broken, "index.csv", 2, column, f"{plane};{plane}")
    _set_field(broken, "index.csv", 2, "scene", "40;40;0")
    _set_field(broken, "index.csv", 2, "texture", "40")  # also listed in another column
    dataset = open_broden(broken)
    assert dataset.image_labels[0] == (40,)
    assert dataset.pixel_planes[0].count(plane) == 1
    labels = load_label_arrays(dataset, progress=False)
    assert [int(x) for x in labels.image_labels[0] if x] == [40]


def test_label_above_16_bits_is_kept_whole(broken):
    with open(broken / "label.csv", "a", newline="") as f:
        csv.writer(f).writerow([65548, "big", "object(1)", 1, "0.1", ""])
    column, _ = _first_plane_field(broken)
    plane = np.full((16, 16), 65548, np.int32)
    plane[0, 0] = 0
    Image.fromarray(plane).save(broken / "images" / "wide.tif")  # 32-bit integer pixels
    _set_field(broken, "index.csv", 2, column, "wide.tif")
    dataset = open_broden(broken)
    labels = load_label_arrays(dataset, progress=False)
    slot = dataset.pixel_planes[0].index("wide.tif")
    np.testing.assert_array_equal(labels.label_planes(0, 1)[0, slot], plane)


def test_plane_with_blue_channel_is_refused(broken):
    _, plane = _first_plane_field(broken)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[3, 4, 2] = 1, 1  # label 1 + 65536 * B would be cut to 1
    Image.fromarray(rgb).save(broken / "images" / plane)
    with pytest.raises(BrodenFormatError, match=rf"{re.escape(plane)}: blue channel is not zero"):
        load_label_arrays(open_broden(broken), progress=False)


# Bounds ------------------------------------------------------------------------------


def test_huge_label_number_is_refused_before_allocating(broken):
    with open(broken / "label.csv", "a", newline="") as f:
        csv.writer(f).writerow([1_000_001, "huge", "object(1)", 1, "0.1", ""])
    with pytest.raises(BrodenFormatError, match=r"label\.csv, line \d+, field 'number': 1000001"):
        open_broden(broken)


def test_huge_label_size_is_refused_before_allocating(broken):
    rows = _rows(broken / "index.csv")
    for row in rows[1:]:
        row[rows[0].index("sh")] = row[rows[0].index("sw")] = "1000000"
    _write_rows(broken / "index.csv", rows)
    with pytest.raises(BrodenFormatError, match=r"index\.csv, line 2: sizes .* \[1, 8192\]"):
        open_broden(broken)


def _png_header_only(width, height):
    """A PNG whose header declares width x height grey pixels, with almost no pixel data."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1))  # one row of the declared height
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_plane_size_checked_from_header_before_decoding(broken, monkeypatch):
    _, plane = _first_plane_field(broken)
    (broken / "images" / plane).write_bytes(_png_header_only(9000, 9000))
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or load(image)
    )
    with pytest.raises(BrodenFormatError, match=r"plane is 9000x9000 but index\.csv declares"):
        load_label_arrays(open_broden(broken), progress=False)
    assert (9000, 9000) not in decoded  # the header was read, not the 81 megapixels


# Writer and synthetic world -----------------------------------------------------------

# NetDissect-Lite (loadseg.py) reads a CSV field as a number only in these two forms.
LITE_INT, LITE_FLOAT = re.compile(r"^\d+$"), re.compile(r"^\d+\.\d*$")


def test_written_numbers_are_plain_decimals(tmp_path):
    plane = np.zeros((4, 4), np.int32)
    plane[0, 0] = 1
    image = ProbeImage("a", np.zeros((8, 8, 3), np.uint8), {"object": [plane]})
    folder = write_broden(
        tmp_path / "b",
        ["object"],
        ["-", "dot"],
        {"object": [1]},
        [image],
        coverage={("object", 1): 2.0**-14},
    )
    assert _rows(folder / "c_object.csv")[1][4] == "0.00006103515625"
    assert _rows(folder / "label.csv")[1][4] == "0.00006103515625"
    for name, fields in (
        ("label.csv", ("frequency", "coverage")),
        ("c_object.csv", ("frequency", "coverage")),
    ):
        rows = _rows(folder / name)
        for row in rows[1:]:
            for field in fields:
                value = row[rows[0].index(field)]
                assert LITE_INT.match(value) or LITE_FLOAT.match(value), (name, field, value)


@pytest.mark.parametrize("command", ["probe", "figure"])
def test_negative_seed_is_refused(tmp_path, capsys, command):
    out = tmp_path / ("probe" if command == "probe" else "w.png")
    extra = ["--images", "2", "--no-progress"] if command == "probe" else []
    with pytest.raises(SystemExit) as exit_:  # the CLI's argument parser refuses it
        main(["synthetic", command, "--out", str(out), "--seed", "-1", *extra])
    assert exit_.value.code == 2
    assert "--seed: must be >= 0, got -1" in capsys.readouterr().err
    assert not out.exists()


def test_negative_seed_is_refused_by_the_library(tmp_path):
    from jaxdissect.data.synthetic import world

    with pytest.raises(DissectError, match="seed must be >= 0, got -1"):
        world.write_probe(tmp_path / "probe", 2, -1, world.WorldConfig(image_size=32), False)
    assert not (tmp_path / "probe").exists()


def test_probe_larger_than_the_disk_is_refused_up_front(tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 10**5, 10**5))
    out = tmp_path / "probe"
    code = main(["synthetic", "probe", "--out", str(out), "--images", "1000", "--no-progress"])
    assert code == 2
    assert re.search(r"1000 images of 64x64 need about .* GiB free", capsys.readouterr().err)
    assert not out.exists()
