import shutil

import numpy as np
import pytest
from PIL import Image
from probe_fixture import CATEGORIES, expected_label_category

from jaxdissect import BrodenFormatError, load_label_arrays, open_broden
from jaxdissect.data.cache import cache_key


def test_reads_what_was_written(probe):
    dataset = open_broden(probe.directory)
    assert dataset.categories == CATEGORIES  # category.csv order, not index.csv's
    assert dataset.num_images == 12
    assert dataset.image_size == (32, 32) and dataset.label_size == (16, 16)
    np.testing.assert_array_equal(dataset.label_category, probe.label_category)
    assert dataset.category_of(260) == "part" and dataset.category_of(7) == "material"
    labels = load_label_arrays(dataset, progress=False)
    decoded = labels.label_planes(0, 12)
    for i in range(12):
        planes = probe.planes[i]
        np.testing.assert_array_equal(decoded[i, : len(planes)], np.stack(planes))
        assert not decoded[i, len(planes) :].any()
        expected_scalars = [s for s in probe.scalars[i] if s]  # scene "0" is unlabelled
        got = [int(s) for s in labels.image_labels[i] if s]
        assert got == expected_scalars
    assert decoded.max() > 255  # the G channel is decoded


def test_plane_png_encodes_r_plus_256_g(probe):
    dataset = open_broden(probe.directory)
    plane = next(p for planes in dataset.pixel_planes for p in planes if p.endswith("part_0.png"))
    rgb = np.asarray(Image.open(probe.directory / "images" / plane)).astype(np.int64)
    decoded = rgb[..., 0] + 256 * rgb[..., 1]
    labels = load_label_arrays(dataset, progress=False)
    index = next(i for i, planes in enumerate(dataset.pixel_planes) if plane in planes)
    slot = dataset.pixel_planes[index].index(plane)
    np.testing.assert_array_equal(labels.label_planes(index, index + 1)[0, slot], decoded)


def test_category_subset_recomputes_primary(probe):
    dataset = open_broden(probe.directory, ["object", "color", "scene"])
    assert dataset.categories == ("color", "object", "scene")
    np.testing.assert_array_equal(
        dataset.label_category, expected_label_category(("color", "object", "scene"))
    )
    # Without part, label 260 falls back to object; without material, 7 to color.
    assert dataset.category_of(260) == "object" and dataset.category_of(7) == "color"
    assert all(
        not p.endswith(("part_0.png", "material_0.png")) for ps in dataset.pixel_planes for p in ps
    )


def test_cache_is_reused_and_keyed_by_content(probe, tmp_path):
    dataset = open_broden(probe.directory)
    first = load_label_arrays(dataset, tmp_path / "c", progress=False)
    key = cache_key(dataset)
    assert (tmp_path / "c" / key / "manifest.json").is_file()
    second = load_label_arrays(dataset, tmp_path / "c", progress=False)
    np.testing.assert_array_equal(first.slot_planes, second.slot_planes)
    assert cache_key(open_broden(probe.directory, ["color"])) != key


@pytest.fixture
def broken(probe, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(probe.directory, copy)
    return copy


def _replace_line(path, line_number, new):
    lines = path.read_text().splitlines()
    lines[line_number - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_missing_file(broken):
    (broken / "label.csv").unlink()
    with pytest.raises(BrodenFormatError, match=r"label\.csv: file not found"):
        open_broden(broken)


def test_missing_column(broken):
    text = (broken / "index.csv").read_text().replace(",sh,", ",shh,", 1)
    (broken / "index.csv").write_text(text)
    with pytest.raises(BrodenFormatError, match=r"index\.csv: missing column\(s\) sh"):
        open_broden(broken)


def test_bad_integer_names_line_and_field(broken):
    lines = (broken / "index.csv").read_text().splitlines()
    fields = lines[3].split(",")
    fields[4] = "sixteen"
    _replace_line(broken / "index.csv", 4, ",".join(fields))
    with pytest.raises(BrodenFormatError, match=r"index\.csv, line 4, field 'sh'"):
        open_broden(broken)


def test_size_mismatch_between_rows(broken):
    lines = (broken / "index.csv").read_text().splitlines()
    fields = lines[2].split(",")
    fields[4] = fields[5] = "8"
    _replace_line(broken / "index.csv", 3, ",".join(fields))
    with pytest.raises(BrodenFormatError, match=r"line 3: sizes .* differ"):
        open_broden(broken)


def test_unknown_image_label(broken):
    text = (broken / "index.csv").read_text().splitlines()
    header = text[0].split(",")
    fields = text[1].split(",")
    fields[header.index("scene")] = "9999"
    _replace_line(broken / "index.csv", 2, ",".join(fields))
    with pytest.raises(BrodenFormatError, match=r"line 2, field 'scene': label 9999"):
        open_broden(broken)


def test_not_utf8(broken):
    (broken / "c_object.csv").write_bytes(
        b"code,number,name,frequency,coverage\n1,10,\xff\xfe,1,0.1\n"
    )
    with pytest.raises(BrodenFormatError, match=r"c_object\.csv: not UTF-8"):
        open_broden(broken)


def test_unknown_category(probe):
    with pytest.raises(BrodenFormatError, match="no category 'materials'"):
        open_broden(probe.directory, ["materials"])


def _first_plane(directory):
    dataset = open_broden(directory)
    return dataset, directory / "images" / dataset.pixel_planes[0][0]


def test_corrupt_png(broken):
    dataset, plane = _first_plane(broken)
    plane.write_bytes(b"not a png")
    with pytest.raises(BrodenFormatError, match=rf"{plane.name}: cannot decode"):
        load_label_arrays(dataset, progress=False)


def test_missing_png(broken):
    dataset, plane = _first_plane(broken)
    plane.unlink()
    with pytest.raises(BrodenFormatError, match=rf"{plane.name}: label plane not found"):
        load_label_arrays(dataset, progress=False)


def test_plane_size_disagrees_with_index(broken, tmp_path):
    dataset, plane = _first_plane(broken)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(plane)
    with pytest.raises(
        BrodenFormatError, match=r"plane is 8x16 but index\.csv declares sh x sw = 16x16"
    ):
        load_label_arrays(dataset, tmp_path / "cache", progress=False)
    assert not any((tmp_path / "cache").glob("*/manifest.json"))  # nothing that looks complete


def test_plane_label_not_in_label_csv(broken):
    dataset, plane = _first_plane(broken)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = 200  # label 51200
    Image.fromarray(rgb).save(plane)
    with pytest.raises(BrodenFormatError, match=r"label 51200 is not in label\.csv"):
        load_label_arrays(dataset, progress=False)
