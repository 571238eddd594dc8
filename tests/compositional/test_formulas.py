import csv
import itertools
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from probe_fixture import dyadic_features, pil_upsample, reference_tally

from jaxdissect.cli import main
from jaxdissect.compositional.counting import problem_from_masks
from jaxdissect.compositional.exact import child_bounds, exact_search, reach_bound
from jaxdissect.compositional.explain import explain
from jaxdissect.compositional.formulas import (
    AND,
    ANDNOT,
    NOP,
    NOTAND,
    OR,
    evaluate_tree,
    extension_counts,
    format_formula,
    pack_bits,
    parse_formula,
    program_tree,
    unpack_bits,
)
from jaxdissect.compositional.search import beam_search, choose_candidates, expand
from jaxdissect.errors import DissectError
from jaxdissect.stats.upsample import resize_maps

WORDS = ("AND", "OR", "AND NOT")


def all_formulas(num_labels: int, length: int):
    """Every formula tree of the grammar with at most ``length`` concepts (repeats allowed)."""
    by_length = {1: list(range(num_labels))}
    for n in range(2, length + 1):
        by_length[n] = [
            (word, left, right)
            for split in range(1, n)
            for left in by_length[split]
            for right in by_length[n - split]
            for word in WORDS
        ]
    return [tree for n in range(1, length + 1) for tree in by_length[n]]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def random_problem(seed: int, num_labels: int = 12, images: int = 10, pixels: int = 40):
    rng = np.random.default_rng(seed)
    concepts = rng.random((num_labels, images, pixels)) < rng.uniform(0.05, 0.5, (num_labels, 1, 1))
    units = rng.random((3, images, pixels)) < 0.15
    units[0] |= concepts[0] & ~concepts[1]  # partly a formula, partly noise
    units[1] = (concepts[2] | concepts[3]) & concepts[4] ^ (rng.random((images, pixels)) < 0.03)
    return units, concepts


def tree_of(result, unit: int):
    return program_tree(result.labels[unit], result.ops[unit])


def test_resize_maps_is_pil_bit_for_bit():
    rng = np.random.default_rng(0)
    for h, w, out_h, out_w in [(7, 7, 112, 112), (4, 5, 16, 12), (3, 3, 3, 3)]:
        maps = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        expected = np.stack(
            [np.stack([pil_upsample(m[..., u], out_h, out_w) for u in range(3)], -1) for m in maps]
        )
        np.testing.assert_array_equal(resize_maps(maps, out_h, out_w), expected)


def test_text_round_trip_and_errors():
    names = ["-", "water", "river bank", "boat (toy)", 'say "hi"', "AND gate", "sky-s"]
    trees = [1, ("AND NOT", ("OR", 1, 2), 3), ("AND", 4, ("AND NOT", 5, 6))]
    for tree in trees:
        assert parse_formula(format_formula(tree, names), names) == tree
    assert (
        format_formula(("AND NOT", ("OR", 1, 2), 6), names)
        == "((water OR river bank) AND NOT sky-s)"
    )
    for bad in ["(water AND", "(water XOR river bank)", "(water AND lake)", "water)", "()"]:
        with pytest.raises(DissectError, match="formula"):
            parse_formula(bad, names)


def test_packed_counts_equal_numpy():
    units, concepts = random_problem(1)
    np.testing.assert_array_equal(unpack_bits(pack_bits(units), units.shape[-1]), units)
    problem = problem_from_masks(units, concepts, np.arange(1, 13), chunk_images=4)
    candidates = choose_candidates(problem, 12)
    programs = np.array([[0, 3, 5], [2, 7, -1], [4, -1, -1]])
    ops = np.array([[OR, NOTAND], [ANDNOT, NOP], [NOP, NOP]])
    labels = np.broadcast_to(programs, (3, 3, 3))
    t, both, inter, area = expand(problem, candidates, labels, np.broadcast_to(ops, (3, 3, 2)))
    for u in range(3):
        for b in range(3):
            rows = candidates.rows[u]
            tree = program_tree(
                np.where(programs[b] >= 0, rows[np.maximum(programs[b], 0)], -1), ops[b]
            )
            mask = evaluate_tree(tree, concepts)
            assert inter[u, b] == (mask & units[u]).sum() and area[u, b] == mask.sum()
            for x in range(12):
                assert t[u, b, x] == (mask & concepts[rows[x]] & units[u]).sum()
                assert both[u, b, x] == (mask & concepts[rows[x]]).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_equals_brute_force(seed):
    units, concepts = random_problem(seed)
    problem = problem_from_masks(units, concepts, np.arange(1, 13), chunk_images=4)
    candidates = choose_candidates(problem, 12)
    formulas = all_formulas(12, 3)
    exact = exact_search(problem, candidates, 3, round_size=4)
    beam = beam_search(problem, candidates, 3, beam=2)
    for u in range(len(units)):
        optimum = max(iou(units[u], evaluate_tree(f, concepts)) for f in formulas)
        assert exact.iou[u] == pytest.approx(optimum, abs=1e-12)
        assert exact.certified[u] and exact.bound[u] == exact.iou[u]
        assert iou(units[u], evaluate_tree(tree_of(exact, u), concepts)) == exact.iou[u]
        assert iou(units[u], evaluate_tree(tree_of(beam, u), concepts)) == beam.iou[u]
        assert beam.iou[u] <= exact.iou[u] + 1e-12
    # Stopped early, the search still bounds the optimum of what it left unexplored.
    for cap in (0, 1, 3):
        capped = exact_search(problem, candidates, 3, child_round=2, max_evaluations=cap)
        for u in range(len(units)):
            optimum = max(iou(units[u], evaluate_tree(f, concepts)) for f in formulas)
            assert capped.bound[u] >= optimum - 1e-12
            assert capped.iou[u] <= optimum + 1e-12
            assert capped.certified[u] == (capped.bound[u] <= capped.iou[u] + 1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_seeded_by_the_beam_is_the_same_optimum(seed):
    """Starting from the beam's formulas changes neither the optimum's IoU nor the
    certificate, and scores no more children."""
    units, concepts = random_problem(seed)
    problem = problem_from_masks(units, concepts, np.arange(1, 13), chunk_images=4)
    candidates = choose_candidates(problem, 12)
    beam = beam_search(problem, candidates, 3, beam=2)
    plain = exact_search(problem, candidates, 3, child_round=2)
    seeded = exact_search(problem, candidates, 3, child_round=2, incumbent=beam)
    np.testing.assert_array_equal(seeded.iou, plain.iou)
    np.testing.assert_array_equal(seeded.bound, plain.bound)
    np.testing.assert_array_equal(seeded.certified, plain.certified)
    assert (seeded.expansions <= plain.expansions).all()
    for u in range(len(units)):
        mask = evaluate_tree(tree_of(seeded, u), concepts)
        assert iou(units[u], mask) == seeded.iou[u]
        assert (mask & units[u]).sum() == seeded.intersection[u] and mask.sum() == seeded.area[u]
    # A unit whose beam formula is the optimum keeps it.
    for u in np.nonzero(beam.iou == plain.iou)[0]:
        np.testing.assert_array_equal(seeded.labels[u], beam.labels[u])


def test_cpu_partner_counts_of_sparse_formulas():
    """Formulas covering few words are counted over their non-zero words only."""
    from jaxdissect.compositional.formula_cpu import partner_counts

    rng = np.random.default_rng(4)
    concepts = rng.random((6, 20, 640)) < 0.002
    concepts[3] |= concepts[2]
    concepts[4] |= concepts[0]  # overlaps of the pairs counted
    concepts[0] |= concepts[2]
    units = rng.random((2, 20, 640)) < 0.01
    units[0] |= concepts[0]
    problem = problem_from_masks(units, concepts, np.arange(1, 7), chunk_images=20)
    rows = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    labels = np.array([[[0, 1, -1], [0, 1, -1], [2, 3, -1]]] * 2)
    ops = np.array([[[OR, NOP], [OR, NOP], [AND, NOP]]] * 2)
    parents, partners = np.array([[0, 0, 1]] * 2), np.array([[4, 5, 0]] * 2)
    t, both = partner_counts(
        problem.unit_bits, problem.concept_bits, rows, labels, ops, parents, partners,
        np.array([0, 1]),
    )  # fmt: skip
    for u, j in itertools.product(range(2), range(3)):
        tree = program_tree(
            rows[u, labels[u, j]] * (labels[u, j] >= 0) - (labels[u, j] < 0), ops[u, j]
        )
        mask = evaluate_tree(tree, concepts) & concepts[rows[u, partners[u, j]]]
        assert t[u, j] == (mask & units[u]).sum() and both[u, j] == mask.sum()
    assert (t[0, [0, 2]] > 0).all() and both[1, 1] > 0


def test_bounds_are_admissible():
    units, concepts = random_problem(5)
    problem = problem_from_masks(units, concepts, np.arange(1, 13), chunk_images=5)
    candidates = choose_candidates(problem, 12)
    k = 12
    pair_inter = np.zeros((3, k, k), np.int64)
    pair_area = np.zeros((3, k, k), np.int64)
    rows = candidates.rows
    for u, x, y in itertools.product(range(3), range(k), range(k)):
        both = concepts[rows[u, x]] & concepts[rows[u, y]]
        pair_inter[u, x, y], pair_area[u, x, y] = (both & units[u]).sum(), both.sum()
    programs = [
        ([0, 1], [AND]),
        ([2, 3], [OR]),
        ([4, 5], [ANDNOT]),
        ([6, 7], [NOTAND]),
        ([8, -1], [NOP]),
    ]
    labels = np.array([[p + [-1] * (3 - len(p)) for p, _ in programs]] * 3)
    ops = np.array([[o + [NOP] * (2 - len(o)) for _, o in programs]] * 3)
    masks = [
        [
            evaluate_tree(
                program_tree(
                    np.where(labels[u, m] >= 0, rows[u, np.maximum(labels[u, m], 0)], -1), ops[u, m]
                ),
                concepts,
            )
            for m in range(len(programs))
        ]
        for u in range(3)
    ]
    inter = np.array([[(m & units[u]).sum() for m in masks[u]] for u in range(3)])
    area = np.array([[m.sum() for m in masks[u]] for u in range(3)])
    bounds = child_bounds(
        candidates, pair_inter, pair_area, labels, ops, inter, area, problem.pixels
    )
    reach = reach_bound(candidates, inter, 2)
    valid = np.ones(inter.shape, bool)
    valid[1, 2] = False  # a formula the search does not extend: no child computed
    skipped = child_bounds(
        candidates, pair_inter, pair_area, labels, ops, inter, area, problem.pixels, valid
    )
    assert (skipped[1, 2] == -np.inf).all()
    np.testing.assert_array_equal(skipped[valid], bounds[valid])
    for u, m in itertools.product(range(3), range(len(programs))):
        for op_index, word in enumerate(("AND", "OR", "AND NOT", "NOTAND")):
            for x in range(k):
                if x in labels[u, m]:  # not a child: the search adds no concept twice
                    assert bounds[u, m, op_index, x] == -np.inf
                    continue
                other = concepts[rows[u, x]]
                if word == "NOTAND":
                    child = other & ~masks[u][m]
                else:
                    child = evaluate_tree((word, 0, 1), {0: masks[u][m], 1: other})
                value = iou(units[u], child)
                assert value <= bounds[u, m, op_index, x] + 1e-12
                assert value <= reach[u, m] + 1e-12
                for word2, y in itertools.product(WORDS, range(k)):  # two more steps
                    grand = evaluate_tree((word2, 0, 1), {0: child, 1: concepts[rows[u, y]]})
                    assert iou(units[u], grand) <= reach[u, m] + 1e-12


def test_planted_formulas_are_recovered(tmp_path):
    from jaxdissect.compositional.formulas import concept_masks
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_label_arrays
    from jaxdissect.data.synthetic.world import write_probe

    write_probe(tmp_path / "probe", 60, 3, progress=False)
    dataset = open_broden(tmp_path / "probe")
    labels = load_label_arrays(dataset, progress=False)
    numbers = np.arange(1, dataset.num_labels)
    masks = concept_masks(labels.label_planes(0, 60), np.asarray(labels.image_labels), numbers)
    present = masks.reshape(len(numbers), -1).any(1)
    masks, numbers = masks[present], numbers[present]
    order = np.argsort(-masks.reshape(len(numbers), -1).sum(1), kind="stable")
    a, b, c = (masks[i] for i in order[[0, 3, 6]])
    planted = [a & ~b, a | c, (a | b) & c]
    problem = problem_from_masks(np.stack(planted), masks, numbers, chunk_images=16)
    # Every label a candidate: the planted labels need not be among a unit's best singles.
    candidates = choose_candidates(problem, len(numbers))
    exact = exact_search(problem, candidates, 3)
    beam = beam_search(problem, candidates, 3, 10)
    for u, unit in enumerate(planted):
        assert exact.iou[u] == 1.0 and exact.certified[u]
        assert iou(unit, evaluate_tree(tree_of(exact, u), masks)) == 1.0
        assert iou(unit, evaluate_tree(tree_of(beam, u), masks)) == beam.iou[u] <= 1.0


def _reference_masks(probe, features, thresholds):
    """Unit and concept masks over all pixels, built from the fixture's own planes with
    PIL's resize: the plain NumPy evaluation the reported IoUs are checked against."""
    sh, sw = probe.label_size
    units = np.stack(
        [
            np.stack([pil_upsample(f[..., u], sh, sw) > thresholds[u] for f in features])
            for u in range(features.shape[-1])
        ]
    ).reshape(features.shape[-1], len(features), sh * sw)
    concepts = {}
    for label in range(1, probe.num_labels):
        mask = np.zeros((len(features), sh * sw), bool)
        for i, planes in enumerate(probe.planes):
            for plane in planes:
                mask[i] |= plane.ravel() == label
            if label in probe.scalars[i]:
                mask[i] = True
        concepts[label] = mask
    return units, concepts


def test_cli_formulas_every_iou_recomputed_from_text(probe, tmp_path, capsys):
    features = np.random.default_rng(3).standard_normal((12, 4, 4, 5)).astype(np.float32)
    np.save(tmp_path / "feats.npy", features)
    out = tmp_path / "out"
    code = main(
        ["formulas", "--dataset", str(probe.directory), "--features", str(tmp_path / "feats.npy"),
         "--out", str(out), "--exact", "--labels-per-unit", "8", "--quantile", "0.05", "--no-progress"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "formulas.json").read_text())
    thresholds = np.array([row["threshold"] for row in summary["units"]], np.float32)
    units, concepts = _reference_masks(probe, features, thresholds)
    names = ["-"] + [f"label-{i}" for i in range(1, 303)]
    with open(out / "formulas.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["unit"] for r in rows] == ["1", "2", "3", "4", "5"]
    for row, record in zip(rows, summary["units"], strict=True):
        unit = units[int(row["unit"]) - 1]
        tree = parse_formula(row["formula"], names)
        mask = evaluate_tree(tree, concepts)
        assert float(row["iou"]) == iou(unit, mask)
        assert row["certified"] == "true" and float(row["bound"]) == float(row["iou"])
        assert record["beam_iou"] <= record["iou"] and record["beam_gap"] >= 0
        beam_mask = evaluate_tree(parse_formula(record["beam_formula"], names), concepts)
        assert record["beam_iou"] == iou(unit, beam_mask)
        assert record["single_iou"] == max(iou(unit, concepts[label]) for label in concepts)
    page = (out / "formulas.html").read_text()
    assert "unit 5" in page and "data:image/png;base64," in page


def test_formulas_without_report_leaves_no_page_behind(probe, tmp_path, capsys):
    """Issue 27: a rerun with --no-report left the previous run's formulas.html."""
    np.save(tmp_path / "feats.npy", dyadic_features(12, (4, 4, 3)))
    out = tmp_path / "out"
    args = ["formulas", "--dataset", str(probe.directory), "--features",
            str(tmp_path / "feats.npy"), "--out", str(out), "--length", "2",
            "--labels-per-unit", "4", "--quantile", "0.05", "--no-progress"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "formulas.html").is_file()
    (out / "mine.partial").write_bytes(b"a user's file")
    assert main([*args, "--no-report"]) == 0, capsys.readouterr().err
    assert not os.path.lexists(out / "formulas.html")
    assert (out / "formulas.csv").is_file() and (out / "formulas.json").is_file()
    assert (out / "mine.partial").read_bytes() == b"a user's file"


def test_length_one_is_the_single_label_iou_and_the_tally(probe, tmp_path):
    features = dyadic_features(12, (4, 4, 6))
    explanations = explain(
        probe.directory,
        features,
        out=None,
        length=1,
        exact=True,
        labels_per_unit=400,
        progress=False,
    )
    thresholds = explanations.thresholds
    units, concepts = _reference_masks(probe, features, thresholds)
    candidates = explanations.candidates
    _, intersection, _ = reference_tally(features, thresholds, probe, "paper")
    for u in range(len(units)):
        best = max(iou(units[u], concepts[label]) for label in concepts)
        assert explanations.result.iou[u] == best
        assert explanations.result.certified[u]
        for x, row in enumerate(candidates.rows[u]):
            label = int(explanations.problem.concept_labels[row])
            assert candidates.intersection[u, x] == (units[u] & concepts[label]).sum()
            # The tally counts a pixel once per plane: where no pixel carries the label twice,
            # its intersection is ours.
            twice = any(
                (sum((plane == label).astype(int) for plane in planes) > 1).any()
                for planes in probe.planes
            )
            if not twice:
                assert candidates.intersection[u, x] == intersection[u, label]


def test_cli_formulas_kernels_give_the_same_csv(probe, tmp_path, monkeypatch):
    """--kernel picks the counter (cpu: Numba loops, xla: the sharded kernels); both write
    the same formulas.csv."""
    import jaxdissect.compositional.counting as search

    features = np.random.default_rng(5).standard_normal((12, 4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "feats.npy", features)
    picked = []
    for name in ("cpu_counter", "xla_counter"):
        original = getattr(search, name)
        monkeypatch.setattr(search, name, lambda o=original, n=name: picked.append(n) or o())
    written = {}
    for kernel in ("cpu", "xla"):
        out = tmp_path / kernel
        code = main(
            ["formulas", "--dataset", str(probe.directory), "--features", str(tmp_path / "feats.npy"),
             "--out", str(out), "--exact", "--labels-per-unit", "8", "--quantile", "0.05",
             "--kernel", kernel, "--no-report", "--no-progress"]
        )  # fmt: skip
        assert code == 0
        written[kernel] = (out / "formulas.csv").read_text()
    assert picked == ["cpu_counter", "xla_counter"]
    assert written["cpu"] == written["xla"] and written["cpu"].count("\n") == 5


def test_cli_formulas_bad_input(probe, tmp_path, capsys):
    np.save(tmp_path / "feats.npy", np.zeros((5, 2, 2, 3), np.float32))
    code = main(
        ["formulas", "--dataset", str(probe.directory), "--features", str(tmp_path / "feats.npy"),
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 2
    assert "lists 12" in capsys.readouterr().err
    assert not (tmp_path / "out" / "formulas.csv").exists()


def test_extension_counts_traces_once_per_shape():
    units = jnp.zeros((2, 8), jnp.uint32)
    concepts = jnp.ones((3, 8), jnp.uint32)
    rows = jnp.zeros((2, 2), jnp.int32)
    labels = jnp.zeros((2, 1, 2), jnp.int32)
    ops = jnp.full((2, 1, 1), NOP, jnp.int32)
    extension_counts(units, concepts, rows, labels, ops)
    before = extension_counts._cache_size()
    extension_counts(units + 1, concepts, rows, labels, ops)
    assert extension_counts._cache_size() == before


def test_packed_unit_masks_equal_resize_then_pack():
    from jaxdissect.compositional.formula_cpu import pack_unit_masks
    from jaxdissect.compositional.formulas import unit_masks

    rng = np.random.default_rng(4)
    # Enlarged, odd sizes (pixels not a multiple of 32), and shrunk.
    for shape, size in [
        ((5, 7, 7, 9), (112, 112)),
        ((4, 4, 5, 3), (13, 11)),
        ((3, 9, 9, 4), (5, 6)),
    ]:
        maps = rng.standard_normal(shape).astype(np.float32)
        thresholds = np.quantile(maps, 0.8, axis=(0, 1, 2)).astype(np.float32)
        thresholds[0] = maps[..., 0].max()  # never exceeded: the skipped maps
        thresholds[1] = maps[0, 0, 0, 1]  # a threshold equal to a value
        packed = pack_unit_masks(maps, thresholds, size)
        expected = pack_bits(unit_masks(maps, thresholds, size))
        assert packed.dtype == np.uint32
        np.testing.assert_array_equal(packed, expected)
        assert not packed[0].any() and packed[1:].any()


@pytest.mark.parametrize("counter_name", ["cpu_counter", "xla_counter"])
def test_counters_equal_numpy(counter_name):
    """Every count of both counters against NumPy on the boolean masks."""
    import jaxdissect.compositional.counting as search

    counter = getattr(search, counter_name)()
    units, concepts = random_problem(6)
    problem = problem_from_masks(units, concepts, np.arange(1, 13), chunk_images=3)
    candidates = choose_candidates(problem, 12, counter)
    rows = candidates.rows
    for u in range(3):
        for x in range(12):
            assert candidates.intersection[u, x] == (units[u] & concepts[rows[u, x]]).sum()
    chosen = np.array([2, 0])
    t, both = counter.pairs(problem, rows, chosen)
    for i, u in enumerate(chosen):
        for x, y in itertools.product(range(12), range(12)):
            pair = concepts[rows[u, x]] & concepts[rows[u, y]]
            assert t[i, x, y] == (pair & units[u]).sum() and both[i, x, y] == pair.sum()
    # Pairs (F, x), two of them sharing F (parent 7), in an order that is not sorted by F,
    # and one that need not be counted (parent -1).
    labels = np.array([[[0, 3, -1], [4, -1, -1], [1, 2, -1], [0, 3, -1]]] * 2)
    ops = np.array([[[NOTAND, NOP], [NOP, NOP], [OR, NOP], [NOTAND, NOP]]] * 2)
    parents, partners = np.array([[7, 1, -1, 7]] * 2), np.array([[2, 6, 5, 9]] * 2)
    t, both = counter.partners(problem, rows, labels, ops, parents, partners, chosen)
    for i, u in enumerate(chosen):
        for j in (0, 1, 3):
            tree = program_tree(np.where(labels[i, j] >= 0, rows[u, labels[i, j]], -1), ops[i, j])
            mask = evaluate_tree(tree, concepts) & concepts[rows[u, partners[i, j]]]
            assert t[i, j] == (mask & units[u]).sum() and both[i, j] == mask.sum()
