"""Concept directions (Net2Vec): each kernel against a slow NumPy reference, and planted
concepts recovered end to end."""

import csv
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probe_fixture import dyadic_features, reference_tally, reference_upsample

from jaxdissect.cli import main
from jaxdissect.compositional import direction_fit as F
from jaxdissect.compositional import directions as D
from jaxdissect.compositional import net2vec as N
from jaxdissect.config import DissectConfig
from jaxdissect.data.broden_writer import ProbeImage, write_broden
from jaxdissect.errors import DissectError

EPS32 = 2.0**-24  # float32 unit roundoff


def up64(a, size):
    """(B, h, w, U) maps upsampled one by one in float64 (the half-pixel rule)."""
    out = np.zeros((a.shape[0], *size, a.shape[3]))
    for b in range(a.shape[0]):
        for u in range(a.shape[3]):
            out[b, :, :, u] = reference_upsample(a[b, :, :, u].astype(np.float64), *size)
    return out


# ------------------------------------------------------------------ kernels vs references


def test_concept_logits_equal_weighted_upsampled_units():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    weights = rng.standard_normal(6).astype(np.float32)
    bias = np.float32(0.7)
    rows, columns = N.upsample_matrices((12, 15), (4, 5))
    got = np.asarray(jax.jit(N.concept_logits)(weights, bias, acts, rows, columns))
    upsampled = up64(acts, (12, 15))
    expected = np.zeros((3, 12, 15))
    for u in range(6):  # the definition: weight the upsampled unit maps
        expected += float(weights[u]) * upsampled[..., u]
    expected += float(bias)
    # float32 rounding of the matrices and of sums of U + 2 * 2 taps, on the terms' scale.
    scale = np.abs(upsampled) @ np.abs(weights.astype(np.float64)) + abs(float(bias))
    assert np.all(np.abs(got - expected) <= 4 * (6 + 8) * EPS32 * scale)


def test_softplus_and_its_derivative():
    x = np.array([-80.0, -20.0, -1.5, -1e-3, 0.0, 1e-3, 0.4, 3.0, 20.0, 80.0], np.float32)
    expected = np.array([np.logaddexp(0.0, float(v)) for v in x])
    assert np.allclose(np.asarray(N.softplus(jnp.asarray(x))), expected, rtol=4 * EPS32, atol=0)
    derivative = np.asarray(jax.vmap(jax.grad(N.softplus))(jnp.asarray(x)))
    sigmoid = np.array([1 / (1 + np.exp(-float(v))) for v in x])
    assert np.allclose(derivative, sigmoid, rtol=8 * EPS32, atol=1e-37)


def random_batch(rng, batch=4, size=(6, 5)):
    logits = (rng.standard_normal((batch, *size)) * 3).astype(np.float32)
    hits = rng.choice([0, 0, 0, 1, 2], size=(batch, *size)).astype(np.int32)
    counted = np.array([True, False, True, True][:batch])
    valid = np.array([True, True, True, False][:batch])
    return logits, hits, counted, valid


def test_balanced_loss_and_gradient_match_numpy_loops():
    rng = np.random.default_rng(1)
    logits, hits, counted, valid = random_batch(rng)
    alpha = 0.8
    loss, gradient = jax.value_and_grad(N.balanced_loss)(
        jnp.asarray(logits), hits, counted, alpha, valid
    )
    total, expected_gradient = 0.0, np.zeros(logits.shape)
    for b in range(logits.shape[0]):
        if not (counted[b] and valid[b]):
            continue
        for y in range(logits.shape[1]):
            for x in range(logits.shape[2]):
                z = float(logits[b, y, x])
                p = 1 / (1 + np.exp(-z))
                if hits[b, y, x] > 0:  # -alpha log sigmoid(z)
                    total += -alpha * np.log(p)
                    expected_gradient[b, y, x] = alpha * (p - 1)
                else:  # -(1 - alpha) log(1 - sigmoid(z))
                    total += -(1 - alpha) * np.log(1 - p)
                    expected_gradient[b, y, x] = (1 - alpha) * p
    total /= logits.size
    expected_gradient /= logits.size
    terms = logits.size
    assert abs(float(loss) - total) <= 8 * terms * EPS32 * total
    # The positives' derivative is alpha * (sigmoid(z) - 1): sigmoid is within a few
    # roundings of its value absolutely, and subtracting 1 from it is exact.
    atol = 4 * EPS32 * max(alpha, 1 - alpha) / logits.size
    assert np.allclose(np.asarray(gradient), expected_gradient, rtol=16 * EPS32, atol=atol)


def test_vmapped_losses_gradient_matches_numpy_chain_rule():
    """All concepts at once: each concept's weight gradient is the sum over its pixels of
    dloss/dz times the upsampled unit maps, computed here concept by concept."""
    rng = np.random.default_rng(2)
    batch, units, concepts = 3, 4, 3
    acts = rng.standard_normal((batch, 2, 3, units)).astype(np.float32)
    planes = rng.choice([0, 1, 2, 3], size=(batch, 2, 4, 6)).astype(np.int16)  # 3: none
    image_concepts = np.array([[3], [2], [3]], np.int16)
    counted = np.array([[True, True, False], [True, False, True], [False, True, True]])
    data = N.ConceptData(*(jnp.asarray(a) for a in (acts, planes, image_concepts, counted)))
    params = {
        "weights": jnp.asarray(rng.standard_normal((concepts, units)), jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(concepts), jnp.float32),
    }
    alphas = np.array([0.9, 0.6, 0.75], np.float32)
    rows, columns = N.upsample_matrices((4, 6), (2, 3))
    valid = jnp.array([True, True, False])

    def total(p):
        return jnp.sum(
            N._losses(p, alphas, jnp.arange(concepts, dtype=jnp.int16), data, valid, rows, columns)
        )

    grads = jax.grad(total)(params)
    upsampled = up64(acts, (4, 6))
    for c in range(concepts):
        w = np.asarray(params["weights"][c], np.float64)
        z = upsampled @ w + float(params["bias"][c])
        dw, db, scale, bias_scale = np.zeros(units), 0.0, np.zeros(units), 0.0
        for b in range(batch):
            if not (counted[b, c] and valid[b]):
                continue
            for y in range(4):
                for x in range(6):
                    hit = (
                        any(planes[b, k, y, x] == c for k in range(2)) or image_concepts[b, 0] == c
                    )
                    p = 1 / (1 + np.exp(-z[b, y, x]))
                    g = alphas[c] * (p - 1) if hit else (1 - alphas[c]) * p
                    g /= batch * 4 * 6
                    dw += g * upsampled[b, y, x]
                    db += g
                    scale += abs(g * upsampled[b, y, x])
                    bias_scale += abs(g)
        bound = 16 * (units + 8 + batch * 24) * EPS32 * (scale + np.abs(dw).max())
        assert np.all(np.abs(np.asarray(grads["weights"][c]) - dw) <= bound)
        # As for the weights: a sum of signed terms can cancel, so its rounding scales with
        # the sum of their sizes, not with the (possibly near-zero) result.
        bound = 16 * (units + 8 + batch * 24) * EPS32 * bias_scale
        assert abs(float(grads["bias"][c]) - db) <= bound


def test_mask_counts_match_loops():
    rng = np.random.default_rng(3)
    logits, hits, counted, valid = random_batch(rng)
    threshold = 0.5
    got = np.asarray(N.mask_counts(jnp.asarray(logits), threshold, hits, counted, valid))
    intersection = area = truth = 0
    for b in range(logits.shape[0]):
        if not valid[b]:
            continue
        for y in range(logits.shape[1]):
            for x in range(logits.shape[2]):
                truth += int(hits[b, y, x])
                if logits[b, y, x] > threshold:
                    intersection += int(hits[b, y, x])
                    area += int(counted[b])
    assert got.tolist() == [intersection, area, truth]


def test_histograms_and_chosen_level_match_brute_force():
    """Logits at bin centres (no rounding at an edge): the histogram equals a loop's, and
    the level it picks is the brute-force best threshold among the levels."""
    rng = np.random.default_rng(4)
    bins, low, high = 16, -2.0, 6.0
    width = (high - low) / bins
    batch, size = 4, (5, 7)
    which = rng.integers(0, bins, size=(batch, *size))
    logits = (low + (which + 0.5) * width).astype(np.float32)
    hits = rng.choice([0, 1, 1, 2], size=(batch, *size)).astype(np.int32)
    hits[which < 8] = rng.choice([0, 0, 0, 1], size=int((which < 8).sum()))  # low z: rare hits
    counted = np.array([True, True, False, True])
    valid = np.array([True, True, True, False])
    got = np.asarray(N.mask_histograms(jnp.asarray(logits), low, high, hits, counted, valid, bins))
    expected = np.zeros((2, bins), np.int64)
    for b in range(batch):
        for y in range(size[0]):
            for x in range(size[1]):
                if valid[b]:
                    k = int((logits[b, y, x] - low) // width)
                    expected[0, k] += hits[b, y, x]
                    expected[1, k] += int(counted[b])
    assert got.tolist() == expected.tolist()
    truth = int(hits[valid].sum())
    best, best_iou = N.choose_levels(got[None].astype(np.int64), np.array([truth]))
    levels = N.threshold_levels([low], [high], bins)[0]
    ious = []
    for level in levels:  # brute force: the mask logits > level, counted pixel by pixel
        inter = area = 0
        for b in range(batch):
            for y in range(size[0]):
                for x in range(size[1]):
                    if valid[b] and logits[b, y, x] > level:
                        inter += hits[b, y, x]
                        area += int(counted[b])
        ious.append(inter / (area + truth - inter))
    assert int(best[0]) == int(np.argmax(ious))
    assert best_iou[0] == max(ious)


def test_split_is_fixed_by_the_key_and_partitions_the_images():
    train, heldout = F.split_images(50, 0.3, jax.random.key(7))
    again = F.split_images(50, 0.3, jax.random.key(7))
    other = F.split_images(50, 0.3, jax.random.key(8))
    assert len(heldout) == 15 and len(train) == 35
    assert sorted([*train, *heldout]) == list(range(50))
    assert np.array_equal(train, again[0]) and np.array_equal(heldout, again[1])
    assert not np.array_equal(heldout, other[1])


# ------------------------------------------------------------------ planted concepts


SPREAD, SINGLE, NOISE = 1, 2, 3
NAMES = ["-", "spread", "single", "noise<&>"]
GRID, LABEL = 4, 16  # 4x4 maps, 16x16 label planes


def planted_world(tmp_path, num_images=400, seed=0, units=12, signal=True):
    """A Broden folder of three independent concepts, each on its own category's plane in
    blocks of the 4x4 grid (present in about 20 % of the cells), and (N, 4, 4, U) features:
    Gaussian noise, plus (with ``signal``) 0.9 on units 0..5 where ``spread`` is (no unit
    segments it well alone) and 4 on unit 7 where ``single`` is. ``noise<&>`` is carried by
    no unit."""
    rng = np.random.default_rng(seed)
    images = []
    features = rng.standard_normal((num_images, GRID, GRID, units)).astype(np.float32)
    block = np.ones((LABEL // GRID, LABEL // GRID), np.int64)
    for i in range(num_images):
        cells = {label: rng.random((GRID, GRID)) < 0.2 for label in (SPREAD, SINGLE, NOISE)}
        planes = {
            category: [np.kron(cells[label] * label, block)]
            for category, label in (("object", SPREAD), ("part", SINGLE), ("material", NOISE))
        }
        if signal:
            features[i, :, :, :6] += 0.9 * cells[SPREAD][..., None]
            features[i, :, :, 7] += 4.0 * cells[SINGLE]
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        images.append(ProbeImage(f"planted/{i:04d}", pixels, planes, {}))
    labels = {"object": [SPREAD], "part": [SINGLE], "material": [NOISE]}
    directory = write_broden(
        tmp_path / "broden", ["object", "part", "material"], NAMES, labels, images
    )
    return directory, features


PLANTED_CONFIG = DissectConfig(quantile=0.2, batch_size=64)  # the concepts' share of cells


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    directory, features = planted_world(tmp_path_factory.mktemp("planted"))
    found = D.directions(directory, features, PLANTED_CONFIG, progress=False)
    return directory, features, found, {row["label"]: row for row in found.rows}


def test_spread_concept_direction_beats_every_single_unit(planted):
    _, _, found, rows = planted
    spread = rows["spread"]
    # Six units each carry the concept at signal-to-noise 0.9; their sum carries it at
    # 0.9 * sqrt(6) = 2.2, which separates the cells far better than any one unit.
    assert spread["iou_direction"] >= spread["iou_best_unit_heldout"] + 0.15
    assert spread["iou_direction"] >= spread["iou_best_unit"] + 0.15
    assert 1 <= spread["best_unit"] <= 6
    index = list(found.names).index("spread")
    standard = np.abs(found.weights[index] * found.scale)
    assert standard[:6].sum() >= 0.85 * standard.sum()
    assert standard[:6].min() > standard[6:].max()


def test_concept_carried_by_one_unit_gives_that_unit(planted):
    _, _, found, rows = planted
    single = rows["single"]
    assert single["best_unit"] == 8 and single["best_unit_heldout"] == 8  # unit 7, 1-based
    assert single["top_units"][0]["unit"] == 8
    index = list(found.names).index("single")
    standard = np.abs(found.weights[index] * found.scale)
    assert standard[7] >= 0.8 * standard.sum()
    # One unit already segments it: the direction can add little.
    assert single["iou_direction"] <= single["iou_best_unit"] + 0.1
    assert single["iou_best_unit"] > 0.4


def test_concept_no_unit_carries_scores_chance(planted):
    _, _, _, rows = planted
    noise = rows["noise<&>"]
    # Chance: the IoU of the mask covering every counted pixel (the concept's share).
    assert 0.1 < noise["iou_chance"] < 0.3
    assert abs(noise["iou_direction"] - noise["iou_chance"]) <= 0.05
    assert noise["iou_direction"] < rows["spread"]["iou_direction"] - 0.2


def test_pure_noise_gives_chance_for_every_concept(tmp_path):
    directory, features = planted_world(tmp_path, num_images=300, seed=3, signal=False)
    found = D.directions(directory, features, PLANTED_CONFIG, progress=False)
    assert len(found.rows) == 3
    for row in found.rows:
        assert abs(row["iou_direction"] - row["iou_chance"]) <= 0.05, row["label"]
        assert row["iou_best_unit"] <= row["iou_chance"] + 0.05, row["label"]


# ------------------------------------------------------------------ the driver's numbers


def subset_probe(probe, image_rows):
    return dataclasses.replace(
        probe,
        planes=[probe.planes[i] for i in image_rows],
        scalars=[probe.scalars[i] for i in image_rows],
    )


def reference_iou(G, I, A, category, label):
    intersection = I[:, label]
    union = A[:, category[label]] + G[label] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def test_heldout_ious_match_numpy_reference(probe):
    """On the fixture's corners (two part planes, image-level scenes and textures, a label
    in two categories): the units' and the directions' IoUs on each side of the split equal
    DESIGN.md's counting done by loops, for the weights and thresholds the run found."""
    probe_images = 12
    features = dyadic_features(probe_images, (4, 4, 5))
    config = DissectConfig(quantile=0.05)
    settings = D.DirectionConfig(min_pixels=8, epochs=3, batch_size=4, heldout=0.4, seed=1)
    found = D.directions(probe.directory, features, config, settings=settings, progress=False)
    assert len(found.heldout_rows) == round(0.4 * probe_images)
    category = probe.label_category
    for side, image_rows in (("heldout", found.heldout_rows), ("train", found.train_rows)):
        sub = subset_probe(probe, image_rows)
        units = reference_tally(features[image_rows], found.unit_thresholds, sub, "paper")
        # The direction as one map: z = up(A w) + b = up(A w + b) (bilinear weights sum to 1).
        maps = features[image_rows].astype(np.float64) @ found.weights.T.astype(np.float64)
        maps += found.bias
        upsampled = up64(maps, probe.label_size)
        # Rounding of the float32 logits (computed on standardised units): U + 8 terms of
        # the raw and the standardised terms' scale. A pixel within it of the threshold may
        # fall on either side: the direction's counts are bounded by the masks above the
        # threshold plus and minus that margin (equal where no pixel lies within it).
        standard = np.abs(features[image_rows] - found.mean) / found.scale
        scale = up64(np.abs(features[image_rows]), probe.label_size) @ np.abs(found.weights.T)
        scale += up64(standard, probe.label_size) @ np.abs(found.weights * found.scale).T
        scale += np.abs(found.bias) + np.abs(found.weights @ found.mean)
        margin = 4 * (5 + 8) * EPS32 * scale.max(axis=(0, 1, 2))
        ambiguous = np.abs(upsampled - found.thresholds) <= margin
        assert ambiguous.sum() <= 0.001 * ambiguous.size
        sure = reference_tally(maps, found.thresholds + margin, sub, "paper")
        maybe = reference_tally(maps, found.thresholds - margin, sub, "paper")
        for index, row in enumerate(found.rows):
            label = row["label_number"]
            unit_ious = reference_iou(*units, category, label)
            suffix = "" if side == "heldout" else "_train"
            best = row["best_unit"] - 1
            assert row[f"iou_best_unit{suffix}"] == pytest.approx(unit_ious[best], abs=1e-12)
            if side == "train":
                assert best == int(np.argmax(unit_ious))
            else:
                assert row["iou_best_unit_heldout"] == pytest.approx(unit_ious.max(), abs=1e-12)
                assert row["heldout_pixels"] == sure[0][label]
                G = sure[0]
                A_all = np.zeros(len(probe.categories), np.int64)
                for i in image_rows:  # the chance mask covers every counted image
                    present = {category[n] for p in probe.planes[i] for n in np.unique(p) if n} | {
                        category[s] for s in probe.scalars[i] if s
                    }
                    for c in present - {-1}:
                        A_all[c] += probe.label_size[0] * probe.label_size[1]
                assert row["iou_chance"] == pytest.approx(G[label] / A_all[category[label]])
            # Direction ``index``'s map is column ``index`` of ``maps``.
            G = sure[0][label]
            i_low, i_high = sure[1][index, label], maybe[1][index, label]
            a_low, a_high = sure[2][index, category[label]], maybe[2][index, category[label]]
            low, high = i_low / (a_high + G - i_low), i_high / (a_low + G - i_high)
            got = row[f"iou_direction{suffix}"]
            assert low - 1e-12 <= got <= high + 1e-12, (side, row["label"])
            if not ambiguous[..., index].any():
                assert got == pytest.approx(low, abs=1e-12)


def test_train_compiles_once_for_a_shape(probe):
    features = dyadic_features(12, (4, 4, 5))
    settings = D.DirectionConfig(min_pixels=8, epochs=2, batch_size=4)
    D.directions(probe.directory, features, settings=settings, progress=False)
    sizes = N.train_directions._cache_size(), N._count_step._cache_size()
    D.directions(probe.directory, features * 2, settings=settings, progress=False)
    assert (N.train_directions._cache_size(), N._count_step._cache_size()) == sizes


def test_too_few_pixels_is_one_clear_error(probe):
    features = dyadic_features(12, (4, 4, 5))
    settings = D.DirectionConfig(min_pixels=10**9)
    with pytest.raises(DissectError, match="no concept covers"):
        D.directions(probe.directory, features, settings=settings, progress=False)


# ------------------------------------------------------------------ command line


def test_cli_writes_csv_npz_json_and_escaped_cards(planted, tmp_path, capsys):
    directory, features, _, rows = planted
    path = tmp_path / "features.npy"
    np.save(path, features)
    out = tmp_path / "out"
    args = ["directions", "--dataset", str(directory), "--features", str(path), "--out", str(out)]
    assert main([*args, "--quantile", "0.2", "--no-progress"]) == 0
    assert "3 concepts" in capsys.readouterr().out
    with open(out / "directions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:5] == [
        "label",
        "category",
        "iou_direction",
        "iou_best_unit",
        "best_unit",
    ]
    by_label = {row["label"]: row for row in table}
    assert set(by_label) == {"spread", "single", "noise<&>"}
    assert by_label["single"]["best_unit"] == "8" and by_label["single"]["category"] == "part"
    # The same run as the library's (same seed, same settings).
    assert float(by_label["spread"]["iou_direction"]) == rows["spread"]["iou_direction"]
    saved = np.load(out / "directions.npz", allow_pickle=False)
    assert saved["weights"].shape == (3, 12)
    assert list(saved["names"]) == [row["label"] for row in table]
    assert len(saved["heldout_images"]) == 120
    page = (out / "directions.html").read_text()
    assert "noise&lt;&amp;&gt;" in page and "noise<&>" not in page
    summary = json.loads((out / "directions.json").read_text())
    assert summary["settings"]["seed"] == 0 and len(summary["concepts"]) == 3


def test_cli_model_source_and_errors(probe, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["directions", "--dataset", str(probe.directory), "--out", str(out), "--no-progress"]
    small = ["--min-pixels", "8", "--epochs", "2", "--step-images", "4"]
    assert main([*common, *small, "--model", "user_model:factory", "--layer", "conv_a"]) == 0
    assert np.load(out / "directions.npz")["weights"].shape[1] == 6  # conv_a's units
    assert main([*common, "--model", "user_model:factory"]) == 2
    assert "name the layer" in capsys.readouterr().err
    assert main([*common, *small, "--model", "user_model:factory", "--layer", "conv_c"]) == 2
    assert main([*common, "--model", "user_model:factory", "--layer", "conv_a",
                 "--min-pixels", str(10**9)]) == 2  # fmt: skip
    assert "no concept covers" in capsys.readouterr().err
