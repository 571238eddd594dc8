"""Unique detectors against training iteration, for a baseline and the paper's variations.

    python -m experiments.training_dynamics [--config smoke|default|variations|gpu|full] [--workdir DIR] [key=value ...]

Trains (via train/) an AlexNet-style network (default: the baseline; ``variations``: also
no dropout, batch norm and a 3x wider last conv layer) with each of ``seeds`` seeds
(initialisation, data order and rotation) on the synthetic world's scenes, snapshotting at
the paper's log-spaced iterations; dissects the last conv layer of every snapshot on the
probe set, in the units' own basis and in a random rotation of it; and writes to the
workdir (default runs/training_dynamics-<config>): config.json, runs/<variation>/seed<s>/
(training workdirs), dissections/<variation>/seed<s>/<step>/<layer>[@rotated]/,
results.json (per-seed counts with means and 95 % t-intervals, the paper's claims with
verdicts, concept evolution between snapshots, provenance), unique_detectors.png,
per_category.png, accuracy.png, concept_transitions.png and summary.html. Everything
already in the workdir is reused, so a rerun resumes. The default (the baseline, 3 seeds)
is ``make demo``; the docs (docs/guide/experiments.md, "What make demo shows") give its time.
"""

from __future__ import annotations

import dataclasses
import html
import json
import sys
import time
from pathlib import Path

import jax

from experiments.claims import claim, claims_html, format_interval, interval
from experiments.cli import experiment_main
from experiments.common import (
    GPU_STEPS,
    GPU_TRAIN_OVERRIDES,
    ROTATED,
    ProbeConfig,
    checkpoint_identity,
    dissect_models,
    eval_accuracy,
    provenance,
    start_experiment,
    unique_counts,
    write_page,
)
from experiments.plots import (
    BAND,
    band,
    figure_html,
    iteration_axis,
    pyplot,
    save_figure,
    verdicts_sentence,
)
from experiments.units import across_seeds, most_switching, transitions, unit_labels
from experiments.workdir import study_set
from jaxdissect.config import DissectConfig
from jaxdissect.rotation import random_rotation
from train.checkpoints import feature_model, list_checkpoints
from train.config import make_config
from train.loop import train

VARIATIONS = {
    "baseline": [],
    "no_dropout": ["dropout=false"],
    "batch_norm": ["batch_norm=true"],
    "wide_last": ["last_width=3"],
    # The paper's AlexNet conv5 has 256 units: 4x the default width's 64.
    "paper_width": ["last_width=4"],
    # ViT-style (run them with layer=block3, as their own study: they have no conv5).
    "vit": ["family=vit", "depth=4"],
    "vit_no_dropout": ["family=vit", "depth=4", "dropout=false"],
}
# The paper's variations of one CNN (the presets' "all variations"): the ViT-style ones have
# no conv5 and are a study of their own.
CNN_VARIATIONS = ("baseline", "no_dropout", "batch_norm", "wide_last")
CATEGORIES = ("object", "part", "scene", "material", "texture", "color")
# Few seeds decide little: where the committed 10-seed run of the default config is.
MORE_SEEDS = (
    "<p>With few seeds most intervals contain 0. The default configuration run with 10 "
    "seeds is committed in the repository: experiments/results/training_dynamics-10seeds/ "
    "(results.json and plots), with its page in the docs: docs/results/training_dynamics-10seeds.md.</p>"
)
TRANSITION_NAMES = {
    "keep": "keep their label",
    "switch_same_category": "switch label (same category)",
    "switch_other_category": "switch label (other category)",
    "gain": "gain a label",
    "lose": "lose their label",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """See the module docstring. ``seeds``: how many seeds (0 .. seeds - 1) each variation
    is trained with; a seed sets the initialisation, the data order and the rotations.
    ``train_overrides``: key=value settings of train/ applied to every run (before the
    variation's own). ``dissect``: how each snapshot is dissected; ``probe``: on what (the
    networks train at ``probe.image_size``)."""

    train_preset: str = "default"
    train_overrides: tuple[str, ...] = ()
    steps: int = 600
    seeds: int = 3
    variations: tuple[str, ...] = ("baseline",)
    layer: str = "conv5"
    dissect: DissectConfig = dataclasses.field(default_factory=lambda: DissectConfig(batch_size=50))
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)

    def __post_init__(self):
        unknown = [v for v in self.variations if v not in VARIATIONS]
        if unknown:
            raise ValueError(f"unknown variations {unknown}; known: {', '.join(VARIATIONS)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        vit = [v for v in self.variations if "family=vit" in VARIATIONS[v]]
        if vit and len(vit) < len(self.variations):
            raise ValueError(
                f"variations {', '.join(vit)} are ViT-style and the others CNNs: they share no "
                "layer; run them as their own study (variations=vit,vit_no_dropout layer=block3)"
            )


PRESETS = {
    "smoke": dict(
        train_preset="smoke",
        steps=6,
        seeds=2,
        variations=("baseline", "no_dropout"),
        dissect=DissectConfig(batch_size=20),
        probe=ProbeConfig(images=40, image_size=32),
    ),
    "default": {},
    # The paper's conv5 width (256 units) at the default scale, 5 seeds (issue 26).
    "paper_width": dict(variations=("paper_width",), seeds=5),
    # The paper's CNN variations at the default scale (about 4x the default's time).
    "variations": dict(variations=CNN_VARIATIONS),
    # An accelerator: full-width AlexNet-style (conv5: 256 units) at 128 px on the synthetic
    # world; train/ has no early stopping, so a step budget (results report the best step).
    "gpu": dict(
        train_overrides=GPU_TRAIN_OVERRIDES,
        steps=GPU_STEPS,
        variations=CNN_VARIATIONS,
        dissect=DissectConfig(batch_size=250),
        probe=ProbeConfig(images=10_000, image_size=128),
    ),
    "full": dict(
        train_preset="full",
        steps=300_000,
        variations=CNN_VARIATIONS,
        dissect=DissectConfig(batch_size=256),
        probe=ProbeConfig(images=0, image_size=128),
    ),
}


def train_config(config: Config, variation: str, seed: int):
    """The training run of ``variation`` with ``seed`` (initialisation and data order)."""
    overrides = [
        f"steps={config.steps}",
        f"image_size={config.probe.image_size}",
        f"init_seed={seed}",
        f"seed={seed}",
        *config.train_overrides,
        *VARIATIONS[variation],
    ]
    return make_config(config.train_preset, overrides)


def dissect_run(config: Config, workdir: Path, probe, variation: str, seed: int, progress):
    """Trains (or reuses) one variation with one seed and dissects every snapshot. Returns
    its points (per step: accuracy, counts in the units' and the rotated basis) and its
    units' labels per snapshot."""
    run_dir = workdir / "runs" / variation / f"seed{seed}"
    train(train_config(config, variation, seed), run_dir, progress=progress)
    accuracy = eval_accuracy(run_dir)
    steps = list_checkpoints(run_dir)
    models = [feature_model(run_dir, step) for step in steps]
    models[0].check_layers((config.layer,))  # a clear error, not a KeyError
    # The snapshots of one run share an architecture: one pass dissects them all.
    units = models[0].apply(probe.images[:1], (config.layer,))[config.layer].shape[-1]
    rotated = config.layer + ROTATED
    found = dissect_models(
        models,
        [config.layer],
        probe,
        config.dissect,
        workdir / "dissections" / variation / f"seed{seed}",
        [str(step) for step in steps],
        [checkpoint_identity(run_dir, step) for step in steps],
        rotations=[
            {rotated: (config.layer, random_rotation(rotation_key(seed, step), units))}
            for step in steps
        ],
    )
    points, labellings = [], []
    for step in steps:
        results = found[str(step)]
        points.append(
            {
                "step": step,
                "eval_accuracy": accuracy.get(step),
                "units": unique_counts(results[config.layer]),
                "rotated": unique_counts(results[rotated]),
                "num_units": units,
            }
        )
        labellings.append(unit_labels(results[config.layer], config.dissect.iou_threshold))
        if progress:
            print(
                f"{variation} seed {seed} step {step}: unique detectors "
                f"{points[-1]['units']['total']} (rotated {points[-1]['rotated']['total']}), "
                f"accuracy {points[-1]['eval_accuracy']}",
                file=sys.stderr,
            )
    return points, labellings


def rotation_key(seed: int, step: int) -> jax.Array:
    """The key of the random rotation a snapshot's units are compared with."""
    return jax.random.fold_in(jax.random.key(seed), step)


def _counts(per_seed: list[dict]) -> dict:
    keys = ["total", "detectors", *CATEGORIES]
    return {key: interval([counts.get(key, 0) for counts in per_seed]) for key in keys}


def run(config: Config, workdir: str | Path, progress: bool = True) -> dict:
    started = time.time()
    with start_experiment(config, workdir, progress) as (workdir, probe):
        seeds = list(range(config.seeds))
        curves, evolution = {}, {}
        for variation in config.variations:
            runs = {
                seed: dissect_run(config, workdir, probe, variation, seed, progress)
                for seed in seeds
            }
            steps = [p["step"] for p in runs[seeds[0]][0]]
            points = []
            for index, step in enumerate(steps):
                at = [runs[seed][0][index] for seed in seeds]
                accuracies = [p["eval_accuracy"] for p in at]
                points.append(
                    {
                        "step": step,
                        "num_units": at[0]["num_units"],
                        "eval_accuracy": None if None in accuracies else interval(accuracies),
                        "units": _counts([p["units"] for p in at]),
                        "rotated": _counts([p["rotated"] for p in at]),
                    }
                )
            curves[variation] = points
            labellings = {seed: runs[seed][1] for seed in seeds}
            evolution[variation] = {
                "transitions": [
                    {
                        "from": steps[i],
                        "to": steps[i + 1],
                        **across_seeds(
                            [transitions(labellings[s][i], labellings[s][i + 1]) for s in seeds]
                        ),
                    }
                    for i in range(len(steps) - 1)
                ],
                "most_switching": most_switching(labellings, steps),
            }
        results = {
            "study": "training_dynamics",
            "config": dataclasses.asdict(config),
            "layer": config.layer,
            "seeds": seeds,
            "claims": study_claims(curves, seeds),
            "curves": curves,
            "concept_evolution": evolution,
            "best_step": {variation: _best_step(points) for variation, points in curves.items()},
            "provenance": provenance(),
            "seconds": round(time.time() - started, 1),
        }
        with study_set(workdir, results) as folder:
            plot(results, folder)
            write_summary(results, folder)
        return results


def _best_step(points: list[dict]) -> int | None:
    """The snapshot with the highest mean validation accuracy (train/ has no early stopping:
    this is where it would have stopped)."""
    known = [p for p in points if p["eval_accuracy"] is not None]
    return max(known, key=lambda p: p["eval_accuracy"]["mean"])["step"] if known else None


def study_claims(curves: dict, seeds: list[int]) -> list[dict]:
    """The paper's claims this study tests, from its curves (each count per seed)."""

    def total(variation, basis="units", index=-1):
        return curves[variation][index][basis]["total"]["per_seed"]

    found = []
    for variation, points in curves.items():
        last = points[-1]["step"]
        found.append(
            claim(
                f"{variation}: unique detectors emerge with training",
                (f"{variation} step {last}", f"{variation} step 0"),
                total(variation),
                total(variation, index=0),
                seeds,
            )
        )
        found.append(
            claim(
                f"{variation}: units have more unique detectors than a random rotation of "
                "their basis",
                (f"{variation} units", f"{variation} rotated"),
                total(variation),
                total(variation, "rotated"),
                seeds,
            )
        )
    pairs = [
        ("batch_norm", "batch norm lowers interpretability", ("baseline", "batch_norm")),
        ("no_dropout", "dropout raises interpretability", ("baseline", "no_dropout")),
        ("wide_last", "a wider conv5 has more unique detectors", ("wide_last", "baseline")),
    ]
    for needed, sentence, (first, second) in pairs:
        if needed in curves and "baseline" in curves:
            found.append(claim(sentence, (first, second), total(first), total(second), seeds))
    return found


def plot(results: dict, workdir: Path) -> None:
    """Writes the study's four figures into ``workdir``."""
    plt = pyplot()
    curves = results["curves"]
    colors = dict(zip(curves, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    last = max(points[-1]["step"] for points in curves.values())
    for figure in (_plot_unique, _plot_per_category, _plot_accuracy):
        figure(plt, results, colors, last, workdir)
    _plot_transitions(plt, results, last, workdir)  # colored by transition, not variation


def _steps(points):
    return [p["step"] for p in points]


def _plot_unique(plt, results: dict, colors: dict, last: int, workdir: Path) -> None:
    """unique_detectors.png: unique detectors over training, in the units and in a rotation."""
    curves, layer = results["curves"], results["layer"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, basis in zip(axes, ("units", "rotated"), strict=True):
        for variation, points in curves.items():
            stats = [p[basis]["total"] for p in points]
            band(axis, _steps(points), stats, colors[variation], variation, low=0)
        iteration_axis(axis, last)
        axis.set_title(
            f"{layer}: {'its units' if basis == 'units' else 'a random rotation of its basis'}"
        )
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("unique detectors (IoU > 0.04)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, workdir / "unique_detectors.png", results.get("provenance"))


def _plot_per_category(plt, results: dict, colors: dict, last: int, workdir: Path) -> None:
    """per_category.png: unique detectors per category, units and rotated basis."""
    curves, layer = results["curves"], results["layer"]
    # 10 x 6.4 inches at 100 dpi: 1,000 px wide, inside a laptop's window.
    figure, axes = plt.subplots(2, 3, figsize=(10, 6.4), sharex=True)
    for axis, category in zip(axes.ravel(), CATEGORIES, strict=True):
        for variation, points in curves.items():
            band(
                axis,
                _steps(points),
                [p["units"][category] for p in points],
                colors[variation],
                variation,
                "-",
                low=0,
            )
            axis.plot(
                _steps(points),
                [p["rotated"][category]["mean"] for p in points],
                "--",
                color=colors[variation],
                alpha=0.6,
            )
        iteration_axis(axis, last)
        axis.set_title(category, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    figure.suptitle(f"{layer}: unique detectors per category (solid: units, dashed: rotated basis)")
    figure.tight_layout()
    save_figure(figure, workdir / "per_category.png", results.get("provenance"))


def _plot_accuracy(plt, results: dict, colors: dict, last: int, workdir: Path) -> None:
    """accuracy.png: validation accuracy over training."""
    curves = results["curves"]
    figure, axis = plt.subplots(figsize=(6, 4))
    for variation, points in curves.items():
        known = [p for p in points if p["eval_accuracy"] is not None]
        band(
            axis,
            _steps(known),
            [p["eval_accuracy"] for p in known],
            colors[variation],
            variation,
            low=0,
            high=1,
        )
    iteration_axis(axis, last)
    axis.set_ylabel("validation accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, workdir / "accuracy.png", results.get("provenance"))


def _plot_transitions(plt, results: dict, last: int, workdir: Path) -> None:
    """concept_transitions.png: how units' concepts change between snapshots."""
    evolution = results["concept_evolution"]
    figure, axes = plt.subplots(
        1, len(evolution), figsize=(min(10, 4.5 * len(evolution)), 4), sharey=True, squeeze=False
    )
    transition_colors = dict(
        zip(TRANSITION_NAMES, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False)
    )
    for axis, (variation, found) in zip(axes[0], evolution.items(), strict=True):
        ends = [t["to"] for t in found["transitions"]]
        for name, words in TRANSITION_NAMES.items():
            band(
                axis,
                ends,
                [t[name] for t in found["transitions"]],
                transition_colors[name],
                words,
                low=0,
            )
        iteration_axis(axis, last)
        axis.set_title(f"{variation}: units since the previous snapshot", fontsize=10)
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("units")
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, workdir / "concept_transitions.png", results.get("provenance"))


def write_summary(results: dict, workdir: Path) -> Path:
    layer = results["layer"]
    rows = []
    for variation, points in results["curves"].items():
        first, last = points[0], points[-1]
        links = "<br>".join(
            f"seed {seed}: "
            + " ".join(
                f'<a href="dissections/{html.escape(variation)}/seed{seed}/{p["step"]}/'
                f'{html.escape(layer)}/report.html">{p["step"]}</a>'
                for p in points
            )
            for seed in results["seeds"]
        )
        accuracy = last["eval_accuracy"]
        rows.append(
            f"<tr><td>{html.escape(variation)}</td>"
            f"<td>{format_interval(first['units']['total']['mean'], first['units']['total']['ci95'], 1)}</td>"
            f"<td>{format_interval(last['units']['total']['mean'], last['units']['total']['ci95'], 1)}</td>"
            f"<td>{format_interval(last['rotated']['total']['mean'], last['rotated']['total']['ci95'], 1)}</td>"
            f"<td>{format_interval(last['units']['detectors']['mean'], last['units']['detectors']['ci95'], 1)}"
            f" of {last['num_units']}</td>"
            f"<td>{'' if accuracy is None else format_interval(accuracy['mean'], accuracy['ci95'], 3)}</td>"
            f"<td>{results['best_step'][variation]}</td><td>{links}</td></tr>"
        )
    switching = "".join(
        f"<tr><td>{html.escape(variation)}</td><td>{item['seed']}</td><td>{item['unit']}</td>"
        f"<td>{item['switches']}</td><td>"
        + html.escape(
            " → ".join(f"{step}: {label or '–'}" for step, label in item["labels"].items())
        )
        + "</td></tr>"
        for variation, found in results["concept_evolution"].items()
        for item in found["most_switching"]
    )
    seeds = len(results["seeds"])
    body = f"""<h1>Unique detectors across training ({html.escape(layer)})</h1>
<p>{seeds} seed(s) per variation; run in {results["seconds"]} s. Counts are means over
seeds with their 95 % t-interval in brackets.</p>
{MORE_SEEDS if seeds < 10 else ""}
{claims_html(results["claims"])}
<h2>Counts</h2>
<table><tr><th>variation</th><th>unique at step 0</th><th>unique at the end</th>
<th>rotated basis, end</th><th>detectors, end</th><th>accuracy, end</th>
<th>best step (accuracy)</th><th>dissection reports by seed and step</th></tr>
{"".join(rows)}</table>
<h2>Plots</h2>
{figure_html("unique_detectors.png", f"Unique detectors (IoU > 0.04) of {layer} against training iteration, per variation; left: its units, right: a random rotation of its basis (line: mean over {seeds} seed(s); {BAND}, clipped at 0)." + verdicts_sentence(results["claims"]))}
{figure_html("per_category.png", f"Unique detectors per concept category against training iteration (solid: units, line and {BAND}, clipped at 0; dashed: the rotated basis's mean).")}
{figure_html("accuracy.png", f"Validation accuracy against training iteration, per variation (line: mean over seeds; {BAND}, clipped to [0, 1]).")}
{figure_html("concept_transitions.png", f"Between consecutive snapshots, how many units keep, switch, gain or lose their label (line: mean over seeds; {BAND}, clipped at 0).")}
<h2>Units that switch concept most</h2>
<table><tr><th>variation</th><th>seed</th><th>unit</th><th>switches</th><th>label by step</th></tr>
{switching}</table>
<p>Config: <code>{html.escape(json.dumps(results["config"]))}</code></p>
"""
    return write_page(workdir / "summary.html", "Training dynamics", body)


def main(argv=None) -> int:
    return experiment_main("training_dynamics", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
