"""The training loop: jitted, data-parallel, checkpointed along a schedule, resumable.

A workdir holds config.json, metrics.jsonl (one JSON object per logged step),
checkpoints/<step>/ (Orbax: parameters, batch statistics and optimiser state). The data
order, augmentation and dropout depend only on (seed, step), so a run killed at any point
and restarted with the same command resumes from its last checkpoint and reaches the
parameters an uninterrupted run reaches.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdissect.data.loader import iterate_batches, rotation_pretext
from jaxdissect.outdir import held_lock, open_plain_file, replace_file, report_leftovers
from jaxdissect.progress import progress_bar
from train.checkpoints import load_run
from train.config import TrainConfig
from train.data import load_data
from train.models import PREPROCESS, build_model
from train.state import (
    DIGESTS,
    checkpoint_manager,
    damage,
    make_optimizer,
    read_digests,
    restore,
    save,
    split,
)

INT32_MAX = np.iinfo(np.int32).max


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, a workdir of another run, ...)."""


def _augment(images, key):
    """Random horizontal flips, one coin per image."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def make_train_step(graphdef, tx, config: TrainConfig):
    base_key = jax.random.key(config.seed)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
    def train_step(params, rest, opt_state, bad_step, images, labels, step):
        key = jax.random.fold_in(base_key, step)
        augment_key, dropout_key = jax.random.split(key)
        inputs = PREPROCESS(_augment(images, augment_key))

        # A copying merge, so that the batch statistics it updates belong to this trace.
        def loss_fn(params, rest):
            model = nnx.merge(graphdef, params, rest, copy=True)
            model.train()
            logits = model(inputs, rngs=nnx.Rngs(dropout=dropout_key))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss)
        bad_step = jnp.where(finite, bad_step, jnp.minimum(bad_step, step))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return params, rest, opt_state, bad_step, {"loss": loss, "accuracy": accuracy}

    return train_step


@functools.partial(jax.jit, static_argnums=0)
def _predict(graphdef, params, rest, images):
    """Predicted classes; jitted once per model structure, not per evaluation."""
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return jnp.argmax(model(PREPROCESS(images)), -1)


def evaluate(graphdef, params, rest, source, config: TrainConfig, batch_size: int = 128) -> float:
    """Accuracy on ``source`` (for rotation: of predicting the quarter turn).

    Every batch has the same shape (the last is padded with repeats of its first image and
    the padding not counted), so that one compiled ``_predict`` serves every evaluation.
    """
    batch_size = min(batch_size, len(source))
    correct = 0
    for start in range(0, len(source), batch_size):
        stop = min(start + batch_size, len(source))
        batch = [source[i] for i in range(start, stop)]
        images = np.stack([b["image"] for b in batch])
        labels = np.array([b["label"] for b in batch])
        if config.objective == "rotation":
            images, labels = rotation_pretext(images, config.seed + 1, start)
        padding = batch_size - len(images)
        images = np.concatenate([images, np.repeat(images[:1], padding, axis=0)])
        predicted = np.asarray(_predict(graphdef, params, rest, images))[: len(labels)]
        correct += int(np.sum(predicted == labels))
    return correct / len(source)


def _check_workdir(workdir: Path, config: TrainConfig) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise TrainingError(f"--workdir {workdir}: a file, not a folder")
    checkpoints = workdir / "checkpoints"
    # Orbax follows a link there: a run's checkpoints would be written outside the workdir.
    if checkpoints.is_symlink() or (checkpoints.exists() and not checkpoints.is_dir()):
        raise TrainingError(
            f"{checkpoints}: a link or not a folder; the run keeps its checkpoints in a "
            "folder of its own: move it away"
        )
    path = workdir / "config.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, too deep
            previous = f"not JSON ({error})"
        if not isinstance(previous, dict):
            raise TrainingError(
                f"{path}: not a training config ({str(previous)[:100]}); "
                "use another --workdir or move that file away"
            )
        # Both sides through JSON, where tuples are lists.
        current = json.loads(config.to_json())
        if previous != current:
            changed = sorted(
                k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k)
            )
            raise TrainingError(
                f"{workdir} holds a run with another config (differs in {', '.join(changed)}); "
                "use another --workdir or the same settings to resume"
            )


def _record_config(workdir: Path, config: TrainConfig) -> None:
    """Writes config.json where there is none: once the run has a model to train, so that
    a run refused before (a bad ``init_from``) leaves no workdir a corrected rerun would
    take for another run's."""
    path = workdir / "config.json"
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        replace_file(path, config.to_json())


def _logged_until(path: Path, step: int) -> list[str]:
    """The lines of metrics.jsonl ``path`` up to ``step``, the rest to be logged again.

    A last line that is not JSON was cut short when the run was killed: it is dropped, with
    a warning. A bad line before it means the file is damaged: a TrainingError names it.
    """
    try:
        lines = path.read_text().splitlines() if path.is_file() else []
    except UnicodeDecodeError as error:  # whose message names no file
        raise TrainingError(
            f"{path}: not UTF-8 ({error.reason} at byte {error.start}); repair it or move it "
            "away to resume"
        ) from None
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            redone = json.loads(line)["step"] > step
        except (ValueError, TypeError, KeyError, RecursionError):  # RecursionError: nested
            if number < len(lines):
                raise TrainingError(
                    f"{path} line {number}: not a JSON record with a step; "
                    "repair or delete that line to resume"
                ) from None
            warnings.warn(
                f"{path} line {number}: dropped a record cut short by the interruption",
                stacklevel=4,  # the caller of train()
            )
            continue
        if not redone:
            kept.append(line)
    return kept


def _restore_intact(manager, workdir: Path, params, rest, opt_state):
    """(step, params, rest, opt_state) from the latest checkpoint that restores whole, or
    None when there is none. A damaged later one (a file changed since it was saved, one
    that checkpoints.sha256.json does not record, or one Orbax cannot read) is moved aside
    to ``workdir/damaged-checkpoints/``, with a warning, so that the run redoes its steps.
    A digest record that cannot be read stops the run, naming it (``read_digests``)."""
    steps = sorted(manager.all_steps(), reverse=True)
    for name in (DIGESTS, "run.json", "config.json"):  # killed writes' temporary files
        report_leftovers(workdir, name)
    # Checked even before the first checkpoint, which adds to it.
    if read_digests(workdir) is None and steps:
        warnings.warn(
            f"{workdir}: no {DIGESTS} (saved before digests were recorded, or removed); "
            "resuming from its checkpoints unverified",
            stacklevel=4,  # the caller of train()
        )
    for step in steps:
        problem = damage(workdir, step)
        if problem is None:
            try:
                return step, *restore(manager, step, params, rest, opt_state)
            except Exception as error:  # Orbax and TensorStore raise many types for a bad file
                first = str(error).splitlines()[0] if str(error) else ""
                problem = f"damaged ({type(error).__name__}: {first})"
        aside = workdir / "damaged-checkpoints" / str(step)
        if aside.parent.is_symlink():  # the checkpoint would be moved where it leads
            raise TrainingError(f"{aside.parent}: a link, not the run's folder; move it away")
        copies = 0
        while os.path.lexists(aside):  # a dangling link there is someone's too
            copies += 1
            aside = aside.with_name(f"{step}-{copies}")
        aside.parent.mkdir(exist_ok=True)
        os.replace(workdir / "checkpoints" / str(step), aside)
        warnings.warn(
            f"{workdir / 'checkpoints' / str(step)}: {problem[:200]}; moved to "
            f"{aside}; resuming from an earlier checkpoint",
            stacklevel=4,  # the caller of train()
        )
        manager.reload()
    return None


def _initial_weights(model, config: TrainConfig) -> None:
    """Fine-tuning: copy another run's final weights, all but the classifier (a ViT's
    ``head``)."""
    source, _ = load_run(config.init_from)
    source_state = nnx.to_pure_dict(nnx.state(source))
    state = nnx.state(model)
    target = nnx.to_pure_dict(state)
    for key in source_state:
        if key not in ("classifier", "head") and key in target:
            mine = jax.tree.map(np.shape, target[key])
            theirs = jax.tree.map(np.shape, source_state[key])
            if mine != theirs:
                raise TrainingError(
                    f"init_from={config.init_from}: its layer {key!r} has shapes {theirs}, "
                    f"this model's has {mine}; fine-tune from a run of the same architecture"
                )
            target[key] = source_state[key]
    nnx.replace_by_pure_dict(state, target)
    nnx.update(model, state)


def _write_run_info(workdir: Path, config: TrainConfig, data) -> None:
    """Writes run.json (the classes the model is trained on)."""
    class_names = ("0", "90", "180", "270") if config.objective == "rotation" else data.class_names
    run_path = workdir / "run.json"
    run = {"num_classes": len(class_names), "class_names": list(class_names)}
    replace_file(run_path, json.dumps(run))


def _resume(manager, workdir: Path, params, rest, opt_state):
    """(first step, params, rest, opt_state): from the last intact checkpoint, its
    metrics.jsonl cut back to match; else step 0 and an empty metrics.jsonl."""
    restored = _restore_intact(manager, workdir, params, rest, opt_state)
    metrics_path = workdir / "metrics.jsonl"
    if restored is None:
        replace_file(metrics_path, "")
        return 0, params, rest, opt_state
    start = restored[0]
    # Drop what the interrupted run logged after its last checkpoint: it is redone.
    kept = _logged_until(metrics_path, start)
    replace_file(metrics_path, "".join(line + "\n" for line in kept))
    return restored


def train(
    config: TrainConfig, workdir: str | Path, progress: bool = True, stop_after: int | None = None
) -> dict:
    """Trains (or resumes) the run in ``workdir``.

    Args:
      config: the run's config.
      workdir: where config.json, metrics.jsonl and checkpoints/ go.
      progress: show progress bars.
      stop_after: stop once this step is reached (as if interrupted); a later call resumes.

    Returns:
      {"step", "eval_accuracy", "checkpoints"} of the run so far.
    """
    if stop_after is not None and stop_after < 0:
        raise ValueError(f"stop_after must be >= 0, got {stop_after}")
    workdir = Path(workdir)
    _check_workdir(workdir, config)
    data = load_data(config, progress)
    model = build_model(config, 4 if config.objective == "rotation" else data.num_classes)
    if config.init_from:
        _initial_weights(model, config)
    with _workdir_lock(workdir):
        # Again under the lock: a run that held it may have claimed the workdir meanwhile.
        _check_workdir(workdir, config)
        _record_config(workdir, config)
        _write_run_info(workdir, config, data)
        return _train_locked(config, workdir, data, model, progress, stop_after)


@contextlib.contextmanager
def _workdir_lock(workdir: Path):
    """Holds ``workdir/.lock`` (an advisory lock the kernel releases when the process dies)
    for the block; refuses a second run of the same workdir, whose checkpoints and
    metrics.jsonl would interleave with the first's."""
    workdir.mkdir(parents=True, exist_ok=True)
    busy = f"{workdir}: in use by a running training run (pid {{pid}}); wait for it or use "
    path = workdir / ".lock"
    with held_lock(
        path, busy + "another --workdir", f"{path}: cannot open the run's lock", TrainingError
    ):
        yield


def _train_locked(config, workdir, data, model, progress, stop_after) -> dict:
    """``train``'s loop, in a workdir whose lock the caller holds."""
    graphdef, params, rest = split(model)
    tx = make_optimizer(config)
    opt_state = tx.init(params)
    manager = checkpoint_manager(workdir)
    schedule = config.schedule()

    metrics_path = workdir / "metrics.jsonl"
    start, params, rest, opt_state = _resume(manager, workdir, params, rest, opt_state)

    mesh = Mesh(np.array(jax.devices()), ("data",))
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    params, rest, opt_state = jax.device_put((params, rest, opt_state), replicated)
    bad_step = jax.device_put(jnp.asarray(INT32_MAX, jnp.int32), replicated)
    train_step = make_train_step(graphdef, tx, config)

    def log(record):
        # Appended without following a link someone planted at the name.
        with os.fdopen(open_plain_file(metrics_path, "the run's metrics"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def checkpoint(step):
        accuracy = evaluate(graphdef, params, rest, data.evaluation, config)
        log({"step": step, "eval_accuracy": accuracy})
        save(manager, step, params, rest, opt_state)
        return accuracy

    accuracy = None
    if start == 0 and 0 in schedule and manager.latest_step() is None:
        accuracy = checkpoint(0)
    batches = iterate_batches(data.train, config.batch_size, seed=config.seed, start_step=start)
    last = min(config.steps, stop_after) if stop_after is not None else config.steps
    for step in progress_bar(
        range(start, last),
        initial=start,
        total=config.steps,
        desc="training",
        unit="step",
        disable=not progress,
    ):
        batch = next(batches)
        images, labels = batch["image"], batch["label"].astype(np.int32)
        if config.objective == "rotation":
            images, labels = rotation_pretext(images, config.seed, step)
        images, labels = jax.device_put((images, labels), data_sharding)
        params, rest, opt_state, bad_step, metrics = train_step(
            params, rest, opt_state, bad_step, images, labels, step
        )
        done = step + 1
        if done % config.log_every == 0 or done in schedule:
            if int(bad_step) != INT32_MAX:
                raise TrainingError(
                    f"{workdir}: the loss became NaN or inf at step {int(bad_step)}"
                )
            log({"step": done, **{k: float(v) for k, v in metrics.items()}})
        if done in schedule:
            accuracy = checkpoint(done)
    return {"step": last, "eval_accuracy": accuracy, "checkpoints": list(manager.all_steps())}
