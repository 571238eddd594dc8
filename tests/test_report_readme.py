"""The README's Results block is generated from the committed results.json files."""

import json
from pathlib import Path

import pytest

from experiments import report_readme

README = Path(__file__).parent.parent / "README.md"


def stat(per_seed, mean, ci95):
    return {"per_seed": per_seed, "mean": mean, "ci95": ci95}


ARCHITECTURES = {
    "study": "architectures",
    "config": {"steps": 600, "probe": {"images": 600, "image_size": 64}},
    "seeds": [0, 1, 2],
    "claims": [
        {
            "claim": "ResNet-style networks have more unique detectors than AlexNet-style ones",
            "compares": ["resnet_style", "alexnet_style"],
            "per_seed": [[9, 7], [8, 7], [10, 6]],
            "seeds": [0, 1, 2],
            "mean_difference": 2.3333333,
            "ci95": [-0.5, 5.1666667],
            "verdict": "inconclusive",
        }
    ],
    "rows": [
        {
            "variant": "alexnet_style",
            "layer": "conv5",
            "units": 64,
            "unique": {
                "total": stat([7, 7, 6], 6.6666667, [5.232, 8.101]),
                "detectors": stat([26, 20, 23], 23.0, [15.548, 30.452]),
            },
            "unique_rotated": {"total": stat([5, 4, 4], 4.3333333, [2.899, 5.768])},
            "eval_accuracy": stat([0.321, 0.3, 0.31], 0.3103333, [0.284, 0.337]),
            "linear_probe": stat([0.338, 0.33, 0.35], 0.3393333, [0.314, 0.364]),
        }
    ],
    "provenance": {
        "versions": {"jax": "0.10.2", "flax": "0.12.8", "numpy": "2.4.6", "numba": "0.68.1"},
        "git_commit": "0123456789abcdef",
        "machine": {"cpus": 2, "devices": ["cpu"]},
    },
    "seconds": 1234.4,
}

# Written by hand from ARCHITECTURES: what a reader of the README sees.
EXPECTED = """#### `architectures`

3 seed(s); 600 training steps; probe: 600 images at 64 px. Produced with: commit 0123456789; jax 0.10.2, flax 0.12.8, numpy 2.4.6; 2 CPUs, devices cpu; ISA not recorded; 1234 s.

| claim (paper) | difference | mean difference [95 % interval] | seeds | verdict | seeds needed (estimate) |
| --- | --- | --- | --- | --- | --- |
| ResNet-style networks have more unique detectors than AlexNet-style ones | resnet_style − alexnet_style | 2.33 [-0.50, 5.17] | 3 | **inconclusive** | about 5 |

Of 1 claim: 0 replicated, 0 contradicted, 1 inconclusive (the 95 % interval contains 0, or one seed). Seeds needed: how many seeds an inconclusive claim's observed mean and spread would need for its interval to exclude 0 (a plain power calculation at the observed effect).

Counts (mean over seeds [95 % interval]):

| network (layer) | units | unique detectors | rotated basis | detectors | val. accuracy | linear probe |
| --- | --- | --- | --- | --- | --- | --- |
| alexnet_style (conv5) | 64 | 6.7 [5.2, 8.1] | 4.3 [2.9, 5.8] | 23.0 [15.5, 30.5] | 0.310 [0.284, 0.337] | 0.339 [0.314, 0.364] |
"""


def write_results(folder: Path, name: str, results: dict) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "results.json").write_text(json.dumps(results))


def test_generated_block_by_hand(tmp_path):
    write_results(tmp_path, "architectures", ARCHITECTURES)
    block = report_readme.generate(tmp_path)
    assert block.startswith(report_readme.BEGIN) and block.endswith(report_readme.END)
    assert EXPECTED in block


def test_gpu_folder_sits_beside_the_cpu_one(tmp_path):
    write_results(tmp_path, "architectures", ARCHITECTURES)
    write_results(tmp_path, "architectures-gpu", {**ARCHITECTURES, "seeds": [0]})
    block = report_readme.generate(tmp_path)
    assert block.index("#### `architectures`") < block.index("#### `architectures-gpu`")
    assert "1 seed(s); 600 training steps" in block


def test_check_fails_until_the_readme_is_regenerated(tmp_path, capsys):
    results = tmp_path / "results"
    write_results(results, "architectures", ARCHITECTURES)
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\n\n## Results\n\n{report_readme.BEGIN}\nold\n{report_readme.END}\n\nrest\n"
    )
    argv = ["--results", str(results), "--readme", str(readme)]
    assert report_readme.main([*argv, "--check"]) == 1
    assert "old" in readme.read_text()
    assert report_readme.main(argv) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n## Results\n\n") and text.endswith(
        f"{report_readme.END}\n\nrest\n"
    )
    assert EXPECTED in text and "\nold\n" not in text
    assert report_readme.main([*argv, "--check"]) == 0


def test_bad_results_name_the_file(tmp_path, capsys):
    broken = {k: v for k, v in ARCHITECTURES.items() if k != "claims"}
    write_results(tmp_path / "results", "architectures", broken)
    readme = tmp_path / "README.md"
    readme.write_text(f"{report_readme.BEGIN}\n{report_readme.END}\n")
    assert (
        report_readme.main(["--results", str(tmp_path / "results"), "--readme", str(readme)]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert error.endswith("architectures/results.json: missing field 'claims'")
    assert len(error.splitlines()) == 1


def test_markers_are_required(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="needs exactly one"):
        report_readme.replace_block(readme.read_text(), "x", readme)


def test_the_readme_equals_the_committed_results():
    """The real README's block is what the command makes of experiments/results/."""
    assert report_readme.main(["--check"]) == 0
    results = README.parent / "experiments" / "results"
    block = report_readme.generate(results)
    assert block in README.read_text()


def test_explain_results_give_a_segmentation_table(tmp_path):
    explain = {
        "study": "explain",
        "config": {"steps": 1500, "probe": {"images": 600, "image_size": 64}},
        "seeds": [0],
        "claims": [],
        "units": 32,
        "interpreted_units": stat([22], 22.0, None),
        "top_unit_concepts_in_image": stat([0.39], 0.39, None),
        "segmentation": {
            "material": {
                "pixel_accuracy": stat([0.032], 0.032, None),
                "mean_iou": stat([0.041], 0.041, None),
            }
        },
    }
    write_results(tmp_path, "explain", explain)
    block = report_readme.generate(tmp_path)
    assert "| material | 0.032 [undefined: 1 seed] | 0.041 [undefined: 1 seed] |" in block
    assert (
        "Interpreted units (IoU above the threshold): 22.0 [undefined: 1 seed] of 32; share "
        "of the top contributing units whose concept is in the image they explain: 0.390 "
        "[undefined: 1 seed]." in block
    )
    assert "No claim is computed from this run." in block
    assert "| claim (paper) |" not in block  # no empty claims table


def test_compositional_results_give_an_iou_by_length_table(tmp_path):
    def basis(ious, beats, below):
        return {
            "iou_by_length": [stat([v, v], v, [v - 0.01, v + 0.01]) for v in ious],
            "beats_single_label": stat([beats, beats], beats, [beats, beats]),
            "beam_below_optimum": stat([below, below], below, None),
        }

    compositional = {
        "study": "compositional",
        "config": {"steps": 1500, "probe": {"images": 600, "image_size": 64}},
        "layer": "conv5",
        "seeds": [0, 1],
        "claims": [],
        "bases": {
            "units": basis([0.05, 0.07, 0.08], 0.5, 0.125),
            "rotated": basis([0.04, 0.05, 0.055], 0.25, 0.0),
        },
    }
    write_results(tmp_path, "compositional", compositional)
    block = report_readme.generate(tmp_path)
    # Written by hand from the results above.
    expected = """2 seed(s); 1500 training steps; probe: 600 images at 64 px. Produced with: commit unknown.

No claim is computed from this run.

Counts (mean over seeds [95 % interval]):

| conv5 basis | mean IoU, length 1 | mean IoU, length 2 | mean IoU, length 3 | share beating single label | share of beam below optimum |
| --- | --- | --- | --- | --- | --- |
| units | 0.050 [0.040, 0.060] | 0.070 [0.060, 0.080] | 0.080 [0.070, 0.090] | 0.500 [0.500, 0.500] | 0.125 [undefined: 1 seed] |
| rotated | 0.040 [0.030, 0.050] | 0.050 [0.040, 0.060] | 0.055 [0.045, 0.065] | 0.250 [0.250, 0.250] | 0.000 [undefined: 1 seed] |
"""
    assert expected in block
