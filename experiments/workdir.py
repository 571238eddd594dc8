"""A study's workdir: which study it belongs to (one workdir, one study), its lock, and its
published results.

A study publishes results.json, config.json (the config of those results), its figures and
summary.html as one output set of kind ``study`` (jaxdissect.outdir): written whole into
``.jaxdissect/study.<n>/`` and linked from the workdir's names by one rename, so that they
always resolve into one complete run's files. What a study keeps to resume (training runs,
dissections, the probe) stays in the workdir itself, outside the set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from jaxdissect import outdir
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
STUDY_SET = "study"  # the kind of output set a study publishes (jaxdissect.outdir.KINDS)
# The config of the latest run started in a workdir; config.json, a name of the published
# set, is the config of the published results.
RUN_CONFIG = "run_config.json"
# The folders of a workdir that studies write their probe, trainings and dissections into.
WORK_FOLDERS = ("probe", "runs", "dissections", "explanations", "directions")


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
    _check_no_outputs_of_another_kind(workdir)
    record = workdir / STUDY_RECORD
    owner = None
    if record.is_file():
        try:
            owner = json.loads(record.read_text())["study"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
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


def check_own_folders(workdir: Path) -> None:
    """Refuses a link at one of the folders a study writes into (``WORK_FOLDERS``): the
    probe, trainings and dissections would be written where it leads, outside the workdir."""
    for name in WORK_FOLDERS:
        if (workdir / name).is_symlink():
            raise DissectError(
                f"--workdir {workdir}: {name} is a link; a study writes only into folders "
                "of its own: move it away"
            )


def _check_no_outputs_of_another_kind(workdir: Path) -> None:
    """Refuses, before any work, a workdir inside an output folder's store (its files would
    land in another's set) or one holding a dissection's sets (publishing its results.json
    would be refused only at the end of the run)."""
    if outdir.STORE in Path(os.path.realpath(workdir)).parts:
        raise DissectError(
            f"--workdir {workdir}: inside an output folder's {outdir.STORE}/ (where it keeps "
            "its sets); choose a folder outside it"
        )
    for kind in outdir.KINDS:
        if kind != STUDY_SET and os.path.lexists(workdir / outdir.STORE / kind):
            raise DissectError(
                f"--workdir {workdir}: holds jaxdissect's {kind} outputs (an --out of "
                "python -m jaxdissect), not a study's; choose another --workdir"
            )


def _config_owner(path: Path, study: str) -> str | None:
    """Whose config.json ``path`` is, by its fields, where that can be told: another
    study's or a training run's (``python -m train``); None where it cannot."""
    import importlib

    from train.config import VIT_FIELDS, TrainConfig

    try:
        fields = set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, RecursionError):  # RecursionError: nested too deep
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


@contextlib.contextmanager
def held_workdir(workdir: Path) -> Iterator[None]:
    """Holds ``workdir/.lock`` (jaxdissect.outdir's lock, which publishing requires) for a
    study's run: a second run of the workdir, whose trainings, dissections and published
    set would interleave with the first's, is refused with the holder's pid."""
    busy = f"--workdir {workdir}: in use by a running study (pid {{pid}}); wait for it or "
    with outdir.held_lock(
        workdir / ".lock",
        busy + "choose another --workdir",
        f"--workdir {workdir}: cannot write there",
    ):
        yield


@contextlib.contextmanager
def study_set(workdir: Path, results: dict) -> Iterator[Path]:
    """A new output set of the study in ``workdir`` (whose lock the caller holds, see
    ``held_workdir``) holding results.json and config.json (``results["config"]``): the
    block writes the figures and summary.html into the folder it is given, and the set is
    published when the block ends. Until then the workdir's names resolve into the previous
    set; a block that raises leaves that set as it was, and a name the new set lacks (a
    figure not drawn again) stops resolving."""
    folder = outdir.new_set(workdir, STUDY_SET)
    try:
        save_json(folder / "results.json", results)
        save_json(folder / "config.json", results["config"])
        yield folder
    except BaseException:
        outdir.discard(folder)
        raise
    outdir.publish(folder, workdir)


def record_config(workdir: Path, config: dict) -> None:
    """Records the config of a run starting in ``workdir`` as run_config.json: config.json
    stays the config of the published results until a new set replaces them, so that a
    rerun with other settings that fails (or is killed) leaves it describing results.json."""
    save_json(workdir / RUN_CONFIG, config)
