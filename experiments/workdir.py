"""A study's workdir: which study it belongs to (one workdir, one study), and its JSON files."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from jaxdissect.errors import DissectError
from jaxdissect.report.results import write_text_atomic

# Every study: a workdir records which one it belongs to (``STUDY_RECORD``).
STUDIES = (
    "architectures",
    "compositional",
    "explain",
    "rotation",
    "supervision",
    "training_dynamics",
    "width_depth",
)
STUDY_RECORD = "study.json"


def study_name(config) -> str:
    """The name of the study whose config this is: its module's last part, also when the
    module runs as ``python -m experiments.<name>`` (and is called ``__main__``)."""
    module = type(config).__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return module.rpartition(".")[2]


def claim_workdir(workdir: Path, study: str) -> None:
    """Records in ``workdir`` that it holds ``study``'s results, or refuses, in one line, a
    workdir that holds another study's (or a training run's).

    A workdir from before the record is told by its config.json: one whose fields are
    exactly another study's config fields (or a training run's) is refused, any other is
    taken as this study's own.
    """
    if workdir.exists() and not workdir.is_dir():
        raise DissectError(f"--workdir {workdir}: exists and is not a folder")
    record = workdir / STUDY_RECORD
    owner = None
    if record.is_file():
        try:
            owner = json.loads(record.read_text())["study"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DissectError(
                f"{record}: unreadable ({error}); move it or the workdir away"
            ) from None
    elif (workdir / "config.json").is_file():
        owner = _config_owner(workdir / "config.json", study)
    if owner is not None and owner != study:
        raise DissectError(
            f"--workdir {workdir}: holds the results of {owner}, not of {study}; "
            "choose another --workdir"
        )
    if not record.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        save_json(record, {"study": study})


def _config_owner(path: Path, study: str) -> str | None:
    """Whose config.json ``path`` is, by its fields, where that can be told: another
    study's or a training run's (``python -m train``); None where it cannot."""
    import importlib

    from train.config import VIT_FIELDS, TrainConfig

    try:
        fields = set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    owners = {"a training run (python -m train)": TrainConfig}
    for name in STUDIES:
        module = importlib.import_module(f"experiments.{name}")
        owners[name] = getattr(module, "Config", None) or module.CommonConfig
    matches = [
        name
        for name, config_type in owners.items()
        if fields == {f.name for f in dataclasses.fields(config_type)}
        # A CNN's training config.json leaves out the ViT-only fields (TrainConfig.to_json).
        or (
            config_type is TrainConfig
            and fields == {f.name for f in dataclasses.fields(TrainConfig)} - set(VIT_FIELDS)
        )
    ]
    if study in matches or len(matches) != 1:
        return None
    return matches[0]


def save_json(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def save_results(workdir: Path, results: dict) -> None:
    """Publishes a study's results.json, then its config.json (``results["config"]``):
    config.json describes the published results (see ``record_config``)."""
    save_json(workdir / "results.json", results)
    save_json(workdir / "config.json", results["config"])


def record_config(workdir: Path, config: dict) -> None:
    """Records the config of a run starting in ``workdir``, unless results are published
    there: their config.json stays until the new results replace them, so that a rerun with
    other settings that fails (or is killed) leaves config.json describing results.json."""
    if not (workdir / "results.json").is_file():
        save_json(workdir / "config.json", config)
