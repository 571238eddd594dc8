"""The data behind the reports, and the report in a real browser (headless Chromium)."""

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from probe_fixture import dyadic_features, pil_upsample

from jaxdissect.cli import main
from jaxdissect.report.html import bar_graph_counts, write_index, write_layer_report


@pytest.fixture(scope="module")
def dissected(probe, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    features = dyadic_features(12, (4, 4, 6), seed=7)
    np.save(out.parent / "f.npy", features)
    code = main(
        [
            "dissect",
            "--dataset",
            str(probe.directory),
            "--features",
            str(out.parent / "f.npy"),
            "--out",
            str(out),
            "--quantile",
            "0.05",
            "--no-progress",
            "--batch-size",
            "5",
        ]
    )
    assert code == 0
    return out, features


def test_top_images_equal_a_brute_force_argsort(dissected):
    out, features = dissected
    counts = np.load(out / "counts.npz")
    maxima = features.max(axis=(1, 2))  # (N, U)
    for unit in range(features.shape[-1]):
        # Descending maximum, lower image index first on ties.
        expected = sorted(range(len(features)), key=lambda i: (-maxima[i, unit], i))[:8]
        assert counts["top_indices"][unit].tolist() == expected
        np.testing.assert_array_equal(counts["top_maps"][unit], features[expected, :, :, unit])


def test_bar_graph_counts_equal_the_summary(dissected):
    out, _ = dissected
    results = json.loads((out / "results.json").read_text())
    bars = bar_graph_counts(results)
    summary = results["summary"]
    assert len(bars) == summary["unique_top_label"]["total"]
    for category in results["categories"]:
        assert (
            sum(n for c, _, n in bars if c == category)
            == summary["detectors_per_category"][category]
        )
    page = (out / "report.html").read_text()
    assert page.count("data-unit=") == len(results["units"]) == 6
    assert page.count('class="bar"') == len(bars)
    assert f"{summary['detectors']}/6 units covering {len(bars)} concepts" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_report_command_rebuilds(dissected, capsys):
    out, features = dissected
    (out / "report.html").unlink()
    (out / "report" / "unit-0999.png").write_bytes(b"an earlier report's strip")  # a user's
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert "report:" in capsys.readouterr().out
    # The 12 images, each encoded once, in one sheet (64 to a sheet); each unit's card
    # carries its maps (float32, base64) for the page's script to draw the masks from.
    counts = np.load(out / "counts.npz")
    assert sorted(p.name for p in (out / "report").iterdir()) == ["images-0000.jpg"]
    assert len(np.unique(counts["top_indices"])) == 12
    page = (out / "report.html").read_text()
    assert page.count("url(report/images-0000.jpg)") == counts["top_indices"].size
    cards = re.findall(r'data-unit="(\d+)".*?data-maps="([^"]*)"', page)
    assert sorted(int(unit) for unit, _ in cards) == list(range(1, features.shape[-1] + 1))
    for unit, text in cards:
        expected = counts["top_maps"][int(unit) - 1]
        drawn = np.frombuffer(base64.b64decode(text), "<f4").reshape(expected.shape)
        np.testing.assert_array_equal(drawn, expected)
    kept = [p for p in (out / ".jaxdissect").glob("dissect.*/report/unit-0999.png")]
    assert [p.read_bytes() for p in kept] == [b"an earlier report's strip"]  # not deleted


EVIL = "<img src=x onerror=alert(1)>"


def test_dataset_strings_are_escaped(dissected, tmp_path):
    out, _ = dissected
    copy = tmp_path / "layer"
    shutil.copytree(out, copy)
    results = json.loads((copy / "results.json").read_text())
    renamed = results["categories"][0]
    results["categories"][0] = EVIL
    summary = results["summary"]
    for counts in (
        summary["detectors_per_category"],
        summary["unique_top_label"]["per_category"],
        summary["unique_per_category"]["per_category"],
    ):
        counts[EVIL] = counts.pop(renamed)
    for row in results["units"]:
        row["category"] = EVIL if row["category"] == renamed else row["category"]
        row["label"] = EVIL + '"quoted'
        for field in ("label", "truth", "activation", "intersect", "iou"):
            row[f"{EVIL}-{field}"] = row.pop(f"{renamed}-{field}")
    (copy / "results.json").write_text(json.dumps(results))
    for page in (write_layer_report(copy, None), write_index(tmp_path, ["layer"])):
        text = page.read_text()
        assert "<img" not in text and '"quoted' not in text, page.name
        assert "&lt;img src=x onerror=alert(1)&gt;" in text, page.name


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "headless Chromium is not installed (Debian packages chromium and "
            "chromium-driver; .ci/run installs them)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver))


def _check_drawn_masks(browser, out, probe):
    """Unit 1's card as drawn: the mask canvas equals NetDissect-Lite's masks (PIL's bilinear
    upsampling of each top map, over the unit's threshold), and on screen the top images
    keep their brightness inside the mask and are dimmed to 20 % outside it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array

    counts = np.load(out / "counts.npz")
    results = json.loads((out / "results.json").read_text())
    top, maps = counts["top_indices"][0], counts["top_maps"][0]
    threshold = np.float32(results["thresholds"][0])
    card = browser.find_element(By.CSS_SELECTOR, '.card[data-unit="1"]')
    # Undimmed (a unit below the IoU threshold is drawn at 45 % opacity) and in view.
    browser.execute_script(
        "arguments[0].classList.remove('dim'); arguments[0].scrollIntoView()", card
    )
    canvas = card.find_element(By.CSS_SELECTOR, "canvas.mask")
    WebDriverWait(browser, 20).until(lambda _: canvas.get_attribute("data-drawn") == "1")
    width, height = int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))
    pixels = browser.execute_script(
        "const c = arguments[0]; "
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)",
        canvas,
    )
    alpha = np.asarray(pixels, np.int64).reshape(height, width, 4)[..., 3]

    tile = (width + 2) // len(top) - 2
    assert len(top) * (tile + 2) - 2 == width and height == 32  # the probe's 32 px images
    expected = np.zeros((height, width), np.int64)  # the gaps stay transparent
    inside = np.zeros((height, width), bool)
    images = np.zeros((height, width, 3))
    probe_images = load_image_array(open_broden(probe.directory), progress=False)
    for i, (image, unit_map) in enumerate(zip(top, maps, strict=True)):
        columns = slice(i * (tile + 2), i * (tile + 2) + tile)
        # Dyadic maps enlarged 8x: every product and sum is exact, in float32 as in float64.
        mask = pil_upsample(unit_map, height, tile) > threshold
        expected[:, columns] = np.where(mask, 0, 204)
        inside[:, columns] = mask
        images[:, columns] = probe_images[image]
    np.testing.assert_array_equal(alpha, expected)
    outside = ~inside & (expected == 204)
    assert inside.sum() > 100 and outside.sum() > 100

    strip = card.find_element(By.CSS_SELECTOR, ".strip")
    shot = np.asarray(Image.open(io.BytesIO(strip.screenshot_as_png)).convert("RGB"), float)
    scale = shot.shape[0] // height  # enlarged (nearest) to at least 96 px
    assert scale == 3 and shot.shape[:2] == (height * scale, width * scale)
    shot = shot[::scale, ::scale]  # each pixel drawn as a scale x scale block
    # JPEG (quality 85, then the browser's decoder) changes pixels, not their mean much.
    assert 0.93 < shot[inside].mean() / images[inside].mean() < 1.07
    assert 0.17 < shot[outside].mean() / images[outside].mean() < 0.23


def test_report_in_a_real_browser(dissected, probe, tmp_path):
    out, _ = dissected
    browser = _browser()
    browser.set_window_size(1400, 1000)  # a strip of 8 enlarged 32 px images: 810 px wide
    try:
        from selenium.webdriver.common.by import By

        browser.get((out / "report.html").as_uri())
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        assert len(cards) == 6

        def order():
            return [
                c.get_attribute("data-unit")
                for c in browser.find_elements(By.CSS_SELECTOR, ".card")
            ]

        by_score = order()
        browser.find_element(By.ID, "sort-unit").click()
        assert order() == [str(u) for u in range(1, 7)]
        assert order() != by_score or by_score == [str(u) for u in range(1, 7)]
        browser.find_element(By.ID, "sort-iou").click()
        ious = [
            float(c.get_attribute("data-iou"))
            for c in browser.find_elements(By.CSS_SELECTOR, ".card")
        ]
        assert ious == sorted(ious, reverse=True)
        _check_drawn_masks(browser, out, probe)
        browser.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 1000
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        urls = [
            json.loads(e["message"])["message"].get("params", {}).get("request", {}).get("url", "")
            for e in browser.get_log("performance")
        ]
        assert all(u.startswith(("file://", "data:")) for u in urls if u)
    finally:
        browser.quit()


def test_report_command_on_an_earlier_versions_plain_files(dissected, tmp_path, capsys):
    """An OUT of plain files (as before output sets) is reported into a set; its previous
    files are moved aside, none deleted."""
    out, _ = dissected
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy, ignore=shutil.ignore_patterns(".jaxdissect", ".lock"))
    assert not (legacy / "results.json").is_symlink()
    (legacy / "report" / "mine.txt").write_bytes(b"a user's")
    results = (legacy / "results.json").read_bytes()
    assert main(["report", str(legacy)]) == 0
    assert (legacy / "report.html").is_symlink() and (legacy / "report.html").is_file()
    assert (legacy / "results.json").read_bytes() == results
    aside = legacy / ".jaxdissect" / "displaced.1"
    assert (aside / "report" / "mine.txt").read_bytes() == b"a user's"
    assert "moved" in capsys.readouterr().err
