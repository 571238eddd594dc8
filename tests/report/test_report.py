"""The data behind the reports, and the report in a real browser (headless Chromium)."""

import json
import shutil

import numpy as np
import pytest
from probe_fixture import dyadic_features

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
    strips = sorted(p.name for p in (out / "report").iterdir())
    assert strips == [f"unit-{u:04d}.jpg" for u in range(1, features.shape[-1] + 1)]
    page = (out / "report.html").read_text()
    assert all(f'src="report/{name}"' in page for name in strips)
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


def test_report_in_a_real_browser(dissected, tmp_path):
    out, _ = dissected
    browser = _browser()
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
        images = browser.find_elements(By.CSS_SELECTOR, ".card img")
        assert images and all(
            browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images
        )
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
