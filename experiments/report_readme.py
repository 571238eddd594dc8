"""The README's Results tables and verdicts, generated from committed results.json files.

    python -m experiments.report_readme [--check] [--results DIR] [--readme PATH]

Reads ``DIR/<folder>/results.json`` (default experiments/results/; a folder per study run,
e.g. training_dynamics/ and training_dynamics-gpu/) and rewrites the part of the README
between ``<!-- results:begin -->`` and ``<!-- results:end -->``: per folder, the claims
table (mean paired difference with its 95 % t-interval and the computed verdict), a
sentence counting the verdicts, and the counts per condition. With ``--check`` it writes
nothing and exits 1 when the README differs from what it would write, so the README
cannot drift from the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    REPLICATED,
    format_interval,
    seeds_needed,
)
from jaxdissect.errors import DissectError

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
ROOT = Path(__file__).resolve().parent.parent


def _field(results: dict, path: Path, *keys):
    value = results
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise DissectError(f"{path}: missing field {'.'.join(map(str, keys))!r}")
        value = value[key]
    return value


def _stat(stat: dict | None, digits: int = 1) -> str:
    return "" if stat is None else format_interval(stat["mean"], stat["ci95"], digits)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _provenance(results: dict) -> str:
    found = results.get("provenance") or {}
    versions = found.get("versions") or {}
    machine = found.get("machine") or {}
    commit = found.get("git_commit")
    parts = [
        f"commit {commit[:10]}" if commit else "commit unknown",
        ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("jax", "flax", "numpy")),
        f"{machine.get('cpus', '?')} CPUs, devices {', '.join(machine.get('devices', []))}"
        if machine
        else "",
        f"CPU {machine['cpu_model']}" if machine.get("cpu_model") else "",
        # Recorded since the pin (jaxdissect.float_pin); older runs did not record it.
        f"XLA CPU ISA {machine['xla_cpu_max_isa'] or 'unpinned'}"
        if "xla_cpu_max_isa" in machine
        else ("ISA not recorded" if machine else ""),
        f"{results['seconds']:.0f} s" if "seconds" in results else "",
    ]
    return "; ".join(part for part in parts if part)


def _dynamics_table(results: dict, path: Path) -> list[str]:
    """The training-dynamics study: unique detectors at the first and last step, per variation."""
    rows = []
    for variation, points in _field(results, path, "curves").items():
        first, last = points[0], points[-1]
        rows.append(
            [
                variation,
                str(last["num_units"]),
                _stat(first["units"]["total"]),
                _stat(last["units"]["total"]),
                _stat(last["rotated"]["total"]),
                _stat(last["eval_accuracy"], 3),
                str(results.get("best_step", {}).get(variation, "")),
            ]
        )
    step = last["step"]
    header = ["variation", "units", "unique, step 0", f"unique, step {step}"]
    header += [f"rotated basis, step {step}", f"val. accuracy, step {step}", "best step"]
    return _table(header, rows)


def _explain_table(results: dict, path: Path) -> list[str]:
    """The explain study: interpreted units, and segmentation by their labels."""
    units = _field(results, path, "units")
    lines = [
        f"Interpreted units (IoU above the threshold): "
        f"{_stat(_field(results, path, 'interpreted_units'))} of {units}; share of the "
        "top contributing units whose concept is in the image they explain: "
        f"{_stat(results.get('top_unit_concepts_in_image'), 3) or 'none explained'}.",
        "",
    ]
    rows = [
        [category, _stat(found["pixel_accuracy"], 3), _stat(found["mean_iou"], 3)]
        for category, found in _field(results, path, "segmentation").items()
    ]
    return lines + _table(["segmented category", "pixel accuracy", "mean IoU"], rows)


def _rotation_table(results: dict, path: Path) -> list[str]:
    """The rotation study: unique detectors per IoU threshold and rotation alpha."""
    table = _field(results, path, "by_iou_threshold")
    alphas = [f"alpha {row['alpha']:g}" for row in next(iter(table.values()))]
    rows = [[t, *(_stat(row["unique"]) for row in found)] for t, found in table.items()]
    return _table(["IoU threshold", *alphas], rows)


def _compositional_table(results: dict, path: Path) -> list[str]:
    """The compositional study: formula IoU by length, per basis."""
    bases = _field(results, path, "bases")
    lengths = len(next(iter(bases.values()))["iou_by_length"])
    rows = [
        [
            basis,
            *(_stat(stat, 3) for stat in found["iou_by_length"]),
            _stat(found["beats_single_label"], 3),
            _stat(found["beam_below_optimum"], 3),
        ]
        for basis, found in bases.items()
    ]
    header = [f"{results.get('layer', '')} basis".strip()]
    header += [f"mean IoU, length {n}" for n in range(1, lengths + 1)]
    return _table([*header, "share beating single label", "share of beam below optimum"], rows)


def _directions_table(results: dict, path: Path) -> list[str]:
    """The directions study: directions against the best single unit, per basis."""
    bases = _field(results, path, "bases")
    rows = [
        [
            basis,
            str(found["concepts"]),
            _stat(found["beats_best_unit"], 3),
            _stat(found["iou_direction"], 3),
            _stat(found["iou_best_unit"], 3),
            _stat(found["iou_chance"], 3),
        ]
        for basis, found in bases.items()
    ]
    header = [f"{results.get('layer', '')} basis".strip(), "concepts"]
    header += ["share of directions beating the best unit by 0.05", "direction IoU"]
    return _table([*header, "best unit IoU", "chance IoU"], rows)


def _comparison_table(results: dict, path: Path) -> list[str]:
    """A comparison of networks: unique detectors, rotated basis, accuracy, per network."""
    rows = [
        [
            f"{row['variant']} ({row['layer']})",
            str(row["units"]),
            _stat(row["unique"]["total"]),
            _stat(row["unique_rotated"]["total"]),
            _stat(row["unique"]["detectors"]),
            _stat(row["eval_accuracy"], 3),
            _stat(row["linear_probe"], 3),
        ]
        for row in _field(results, path, "rows")
    ]
    header = ["network (layer)", "units", "unique detectors", "rotated basis", "detectors"]
    return _table([*header, "val. accuracy", "linear probe"], rows)


# Each study's table of counts; a study not named here lists networks side by side.
_COUNTS_TABLES = {
    "training_dynamics": _dynamics_table,
    "explain": _explain_table,
    "rotation": _rotation_table,
    "compositional": _compositional_table,
    "directions": _directions_table,
}


def _counts_table(results: dict, path: Path) -> list[str]:
    """The study's table of counts, as Markdown lines."""
    return _COUNTS_TABLES.get(results.get("study", ""), _comparison_table)(results, path)


def _needed(claim: dict) -> str:
    """Seeds an inconclusive claim would need, computed from its per-seed pairs (so that
    runs from before results.json recorded it show it too)."""
    if claim["verdict"] != INCONCLUSIVE:
        return ""
    needed = seeds_needed([a - b for a, b in claim["per_seed"]])
    if needed is not None:
        return f"about {needed}"
    return "no effect" if claim["mean_difference"] == 0 else "more than 10,000"


def study_section(folder: str, results: dict, path: Path) -> list[str]:
    """One results.json as README lines: heading, provenance, claims, verdicts, counts."""
    claims = _field(results, path, "claims")
    config = _field(results, path, "config")
    probe = config.get("probe", {})
    seeds = len(_field(results, path, "seeds"))
    lines = [
        f"#### `{folder}`",
        "",
        f"{seeds} seed(s); {config.get('steps', '?')} training steps; probe: "
        f"{probe.get('images', '?')} images at {probe.get('image_size', '?')} px. "
        f"Produced with: {_provenance(results)}.",
        "",
    ]
    rows = [
        [
            c["claim"],
            f"{c['compares'][0]} − {c['compares'][1]}",
            format_interval(c["mean_difference"], c["ci95"]),
            str(len(c["seeds"])),
            f"**{c['verdict']}**",
            _needed(c),
        ]
        for c in claims
    ]
    header = ["claim (paper)", "difference", "mean difference [95 % interval]", "seeds"]
    verdicts = [c["verdict"] for c in claims]
    if claims:
        lines += _table([*header, "verdict", "seeds needed (estimate)"], rows)
        lines += [
            "",
            f"Of {len(claims)} claim{'s' * (len(claims) != 1)}: "
            f"{verdicts.count(REPLICATED)} replicated, "
            f"{verdicts.count(CONTRADICTED)} contradicted, {verdicts.count(INCONCLUSIVE)} "
            "inconclusive (the 95 % interval contains 0, or one seed). Seeds needed: how many "
            "seeds an inconclusive claim's observed mean and spread would need for its interval "
            "to exclude 0 (a plain power calculation at the observed effect).",
        ]
    else:  # e.g. explain, whose findings are qualitative
        lines += ["No claim is computed from this run."]
    lines += [
        "",
        "Counts (mean over seeds [95 % interval]):",
        "",
        *_counts_table(results, path),
        "",
    ]
    return lines


def generate(results_dir: Path) -> str:
    """The README's block between the markers (markers included) for ``results_dir``."""
    lines = [
        BEGIN,
        "<!-- Generated by `python -m experiments.report_readme` from "
        "experiments/results/*/results.json: edit those, not this block. -->",
        "",
    ]
    found = sorted(results_dir.glob("*/results.json")) if results_dir.is_dir() else []
    if not found:
        lines += [
            "No multi-seed results are committed yet (experiments/results/ is empty): run a "
            "study, copy its results.json to experiments/results/<study>/ and run "
            "`python -m experiments.report_readme`.",
            "",
        ]
    for path in found:
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DissectError(f"{path}: not JSON ({error})") from None
        lines += study_section(path.parent.name, results, path)
    return "\n".join([*lines, END])


def replace_block(readme: str, block: str, path: Path) -> str:
    """``readme`` with its marked block replaced by ``block``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise DissectError(f"{path}: needs exactly one {BEGIN} and one {END} line")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return head + block + tail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs")
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    try:
        current = args.readme.read_text()
        updated = replace_block(current, generate(args.results), args.readme)
    except (DissectError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if updated == current:
        return 0
    if args.check:
        print(
            f"{args.readme}: its Results block differs from {args.results}; run "
            "`python -m experiments.report_readme`",
            file=sys.stderr,
        )
        return 1
    args.readme.write_text(updated)
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
