"""train/: each variation trains, checkpoints follow the schedule, restores are exact,
a resumed run equals an uninterrupted one, and the sharded step equals one device's."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from train import loop
from train.checkpoints import feature_model, list_checkpoints, load_run
from train.config import PAPER_SCHEDULE, make_config
from train.loop import TrainingError, evaluate, train
from train.models import PREPROCESS, build_model
from train.state import split

# `python -m train` in a subprocess (a fresh JAX, e.g. with other XLA flags).
_CLI = "import sys; from train.__main__ import main; sys.exit(main(sys.argv[1:]))"
_SMOKE = ["--config", "smoke", "--no-progress"]


def _params(model):
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model)))


@pytest.fixture(autouse=True)
def _shared_data_cache(tmp_path_factory, monkeypatch):
    # The drawn scenes are shared by every test of this module.
    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path_factory.getbasetemp() / "train-cache"))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["dropout=false"],
        ["batch_norm=true"],
        ["last_width=3"],
        ["depth=4", "init=orthogonal", "init_seed=3"],
        ["family=resnet", "depth=1"],
        ["objective=rotation"],
    ],
)
def test_each_variation_trains(tmp_path, overrides):
    config = make_config("smoke", overrides)
    result = train(config, tmp_path / "run", progress=False)
    assert result["step"] == config.steps
    assert list_checkpoints(tmp_path / "run") == list(config.schedule())
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x.get("loss", 0.0)) for x in lines)
    assert [x["step"] for x in lines if "eval_accuracy" in x] == list(config.schedule())
    extractor = feature_model(tmp_path / "run")
    layer = "layer3" if config.family == "resnet" else f"conv{config.depth}"
    out = extractor(np.zeros((2, 32, 32, 3), np.uint8), [layer])[layer]
    expected_units = {"[]": 64, "['last_width=3']": 192}.get(str(overrides))
    if expected_units:
        assert out.shape[-1] == expected_units


def test_schedule_is_the_papers():
    config = make_config("smoke", ["steps=300"])
    assert config.schedule() == (0, 1, 2, 4, 9, 20, 44, 99, 223, 300)
    assert PAPER_SCHEDULE[:12] == (1, 2, 4, 9, 20, 44, 99, 223, 492, 1108, 2446, 5509)


def test_restore_is_bit_identical_and_resume_equals_uninterrupted(tmp_path):
    config = make_config("smoke", ["steps=10", "checkpoint_steps=0,3,6,10"])
    train(config, tmp_path / "whole", progress=False)
    partial = train(config, tmp_path / "resumed", progress=False, stop_after=5)
    assert partial["checkpoints"] == [0, 3]
    # Killed while writing a record: its half line is dropped, with a warning naming it.
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    complete = len(metrics.read_text().splitlines())
    with open(metrics, "a") as f:
        f.write('{"step": 5, "lo')
    with pytest.warns(UserWarning, match=rf"metrics.jsonl line {complete + 1}: dropped"):
        train(config, tmp_path / "resumed", progress=False)
    for step in (3, 6, 10):
        a, _ = load_run(tmp_path / "whole", step)
        b, _ = load_run(tmp_path / "resumed", step)
        for x, y in zip(_params(a), _params(b), strict=True):
            np.testing.assert_array_equal(x, y)
    c, _ = load_run(tmp_path / "whole", 10)  # a second restore: bit-identical too
    for x, y in zip(_params(a), _params(c), strict=True):
        np.testing.assert_array_equal(x, y)
    whole = (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert whole == (tmp_path / "resumed" / "metrics.jsonl").read_text()


def test_killed_run_resumes(tmp_path):
    config_args = [
        *_SMOKE,
        "--workdir",
        str(tmp_path / "run"),
        "steps=10",
        "checkpoint_steps=0,3,6,10",
    ]
    killed = subprocess.run(
        [sys.executable, "-c", _CLI, *config_args, "--stop-after", "5"],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == 0, killed.stderr
    done = subprocess.run(
        [sys.executable, "-c", _CLI, *config_args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "checkpoints at [0, 3, 6, 10]" in done.stdout


def test_other_config_in_workdir_is_refused(tmp_path):
    # checkpoint_steps is a tuple here and a list in config.json: not a difference.
    config = make_config("smoke", ["steps=2", "checkpoint_steps=0,2"])
    train(config, tmp_path / "run", progress=False)
    other = make_config("smoke", ["steps=2", "checkpoint_steps=0,2", "dropout=false"])
    with pytest.raises(TrainingError, match=r"another config \(differs in dropout\);"):
        train(other, tmp_path / "run", progress=False)


def test_a_run_writes_through_no_link_planted_in_its_workdir(tmp_path):
    # Issue 27: run.json, metrics.jsonl and config.json were written through whatever
    # symbolic link stood at their names, into files outside the workdir.
    workdir = tmp_path / "run"
    workdir.mkdir()
    for name in ("run.json", "metrics.jsonl"):
        (tmp_path / f"outside-{name}").write_text("mine")
        (workdir / name).symlink_to(tmp_path / f"outside-{name}")
    (workdir / "config.json").symlink_to(tmp_path / "absent.json")  # dangling
    train(make_config("smoke", ["steps=2"]), workdir, progress=False)
    for name in ("run.json", "metrics.jsonl"):
        assert (tmp_path / f"outside-{name}").read_text() == "mine"
    assert not (tmp_path / "absent.json").exists()
    for name in ("run.json", "metrics.jsonl", "config.json"):
        assert not (workdir / name).is_symlink() and (workdir / name).is_file()


@pytest.mark.parametrize("planted", ["checkpoints link", "checkpoints file", "config.json"])
def test_a_link_or_folder_at_a_runs_names_is_refused_in_one_line(tmp_path, capsys, planted):
    """Issue 27: a link at checkpoints/ had Orbax write the run's checkpoints outside the
    workdir; a folder at config.json was named as the temporary file written beside it."""
    from train.__main__ import main

    workdir, outside = tmp_path / "run", tmp_path / "outside"
    workdir.mkdir()
    outside.mkdir()
    if planted == "checkpoints link":
        (workdir / "checkpoints").symlink_to(outside)
    elif planted == "checkpoints file":
        (workdir / "checkpoints").write_text("mine")
    else:
        (workdir / "config.json").mkdir()
    assert main([*_SMOKE, "--workdir", str(workdir), "steps=2"]) == 2
    error = capsys.readouterr().err
    name = "checkpoints" if planted != "config.json" else "config.json"
    assert error.startswith(f"train: error: {workdir / name}: ") and error.count("\n") == 1
    assert list(outside.iterdir()) == [] and not (workdir / "checkpoints" / "0").exists()


def test_a_damaged_checkpoint_is_one_warning_line_and_never_moved_through_a_link(tmp_path, capsys):
    """Issue 27: resuming past a damaged checkpoint warned in Python's two lines (file, line
    and source), and moved the checkpoint through a link planted at damaged-checkpoints/."""
    import shutil

    from train.__main__ import main

    argv = [*_SMOKE, "--workdir", str(tmp_path / "run"), "steps=2", "checkpoint_steps=0,2"]
    assert main(argv) == 0
    digests = tmp_path / "run" / "checkpoints.sha256.json"
    record = json.loads(digests.read_text())
    del record["2"]  # killed between writing checkpoint 2 and recording it
    digests.write_text(json.dumps(record))
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "run" / "damaged-checkpoints").symlink_to(outside)
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert (
        error
        == f"train: error: {tmp_path / 'run' / 'damaged-checkpoints'}: a link, not the run's folder; move it away\n"
    )
    assert list(outside.iterdir()) == []
    argv[argv.index(str(tmp_path / "run"))] = str(tmp_path / "copy")
    assert main(argv) == 0
    error = capsys.readouterr().err
    assert error.startswith(f"train: warning: {tmp_path / 'copy' / 'checkpoints' / '2'}: not ")
    assert error.count("\n") == 1


def test_damaged_metrics_line_is_named(tmp_path):
    config = make_config("smoke", ["steps=2"])
    train(config, tmp_path / "run", progress=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    assert len(lines) >= 3
    lines[1] = lines[1][:7]
    metrics.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(TrainingError, match=r"metrics.jsonl line 2: not a JSON record"):
        train(config, tmp_path / "run", progress=False)


def test_evaluation_compiles_once(monkeypatch):
    """Two evaluations trace the prediction once; the last batch's padding is not counted."""
    config = make_config("smoke")
    model = build_model(config, 4)
    model.eval()
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    predicted = np.argmax(np.asarray(model(PREPROCESS(images))), -1)
    labels = np.where(np.arange(7) < 5, predicted, (predicted + 1) % 4)
    source = [{"image": image, "label": label} for image, label in zip(images, labels, strict=True)]
    traces = []

    def counting_preprocess(x):
        traces.append(x.shape)
        return PREPROCESS(x)

    monkeypatch.setattr(loop, "PREPROCESS", counting_preprocess)
    graphdef, params, rest = split(model)
    for _ in range(2):
        assert evaluate(graphdef, params, rest, source, config, batch_size=3) == 5 / 7
    assert traces == [(3, 32, 32, 3)]


def test_checkpoints_do_not_import_the_loop(tmp_path):
    code = (
        "import sys; from train.checkpoints import list_checkpoints; "
        f"list_checkpoints({str(tmp_path)!r}); print('train.loop' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_bad_overrides():
    with pytest.raises(ValueError, match="key one of"):
        make_config("smoke", ["colour=red"])
    with pytest.raises(ValueError, match="dropout: expected true or false"):
        make_config("smoke", ["dropout=maybe"])
    with pytest.raises(ValueError, match="invalid training config: family='vgg'"):
        make_config("smoke", ["family=vgg"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("width=100000", "width=100000.0 (must lie in (0, 16])"),
        ("image_size=100000", "image_size=100000 (must lie in [16, 1024])"),
        ("last_width=1e6", "last_width=1000000.0 (must lie in (0, 16])"),
        ("learning_rate=inf", "learning_rate=inf (must be finite and > 0)"),
        ("momentum=nan", "momentum=nan (must lie in [0, 1))"),
        ("weight_decay=inf", "weight_decay=inf (must be finite and >= 0)"),
        ("steps=1000000000000", "steps=1000000000000 (must lie in [1, 100000000])"),
        ("family=resnet depth=100000", "depth=100000 (must lie in [1, 64])"),
        # Issue 27: train_images=10**9 drew scenes for minutes into a 3 TB (sparse) file;
        # eval_images=0 and seed=-1 failed in one line naming no key ("range() arg 3 must
        # not be zero", "expected non-negative integer"); seed=2**64 was a traceback.
        ("train_images=1000000000", "train_images=1000000000 (must lie in [1, 10,000,000])"),
        ("eval_images=0", "eval_images=0 (must lie in [1, 10,000,000])"),
        ("seed=-1", "seed=-1 (must lie in [0, 4294967295])"),
        ("init_seed=18446744073709551616", "init_seed=18446744073709551616 (must lie in"),
        ("world_seed=-2", "world_seed=-2 (must lie in [0, 4294967295])"),
        # ViT-only fields and a TFDS-only one were ignored by a CNN on the synthetic world.
        ("patch=4 heads=2", "patch=4 (a ViT-only field), heads=2 (a ViT-only field)"),
        ("mlp_ratio=2", "mlp_ratio=2.0 (a ViT-only field)"),
        ("data_dir=/somewhere", "data_dir='/somewhere' (only for data=tfds:NAME)"),
        ("data=tfds:", "data='tfds:'"),
        # Issue 27: width=1e-9 trained 1-channel layers, silently (max(1, round(...))).
        ("width=1e-9", "width=1e-09 (gives conv1 0 channels; every layer needs at least 4)"),
        ("family=resnet width=0.1", "width=0.1 (gives layer1 3 channels; every layer needs"),
        ("last_width=0.01", "last_width=0.01 (gives conv5 1 channel; every layer needs at"),
        ("family=vit width=0.001", "width=0.001 (gives tokens 0 channels; every layer needs"),
        ("family=vit mlp_ratio=0.01", "mlp_ratio=0.01 (gives mlp 1 channel; every layer"),
    ],
)
def test_sizes_beyond_any_run_are_refused_naming_the_key(override, message, tmp_path, capsys):
    """width=100000 ran out of memory allocating 12 PB in a traceback; learning_rate=inf
    trained a step before its NaN was noticed."""
    from train.__main__ import main

    args = ["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress"]
    assert main([*args, *override.split()]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"train: error: invalid training config: {message}")
    assert error.endswith("\n") and error.count("\n") == 1
    assert not (tmp_path / "w").exists()


def test_scenes_beyond_the_free_space_are_refused_before_drawing(tmp_path, capsys):
    """Issue 27: 9 million 1024 px scenes (26 TB) started drawing into the cache."""
    from train.__main__ import main

    args = ["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress"]
    overrides = ["train_images=9000000", "image_size=1024", "batch_size=2"]
    assert main([*args, *overrides]) == 2
    error = capsys.readouterr().err
    assert error.startswith("train: error: train scenes: 9,000,000 images of 1024x1024 need ")
    assert "(train_images, eval_images, image_size)" in error and error.count("\n") == 1
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("content", ["[1, 2]\n", "not json\n", "\xff"])
def test_a_config_json_that_is_no_config_is_named(content, tmp_path, capsys):
    """Issue 27: a list in config.json was a traceback (AttributeError), text was "Expecting
    value: line 1 column 1 (char 0)" naming no file."""
    from train.__main__ import main

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_bytes(content.encode("latin-1"))
    assert main(["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"train: error: {tmp_path / 'w' / 'config.json'}: not a training")
    assert error.count("\n") == 1
    assert (tmp_path / "w" / "config.json").read_bytes() == content.encode("latin-1")


def test_an_unprepared_tfds_dataset_is_one_line(tmp_path, capsys):
    """Issue 27: data=tfds:NAME of a dataset not prepared (or prepared as TFRecord) was a
    traceback from TFDS."""
    pytest.importorskip("tensorflow_datasets")
    from train.__main__ import main

    args = ["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress"]
    assert main([*args, "data=tfds:mnist", f"data_dir={tmp_path / 'none'}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"train: error: data=tfds:mnist in data_dir={tmp_path / 'none'}: ")
    assert error.count("\n") == 1
    assert not (tmp_path / "w").exists()


def test_a_refused_init_from_leaves_no_workdir(tmp_path, capsys):
    """Issue 27: a typo in init_from wrote config.json first, so that the corrected rerun
    was refused as "a run with another config (differs in init_from)"."""
    from train.__main__ import main

    args = ["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress", "steps=1"]
    assert main([*args, f"init_from={tmp_path / 'typo'}"]) == 2
    assert capsys.readouterr().err == (
        f"train: error: {tmp_path / 'typo'}: not a training workdir (no config.json)\n"
    )
    assert not (tmp_path / "w").exists()


def test_a_negative_stop_after_is_refused(tmp_path, capsys):
    """--stop-after -1 trained nothing and printed "step -1 of 6"."""
    from train.__main__ import main

    with pytest.raises(SystemExit) as exit:
        main(["--config", "smoke", "--workdir", str(tmp_path / "w"), "--stop-after", "-1"])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == "python -m train: error: argument --stop-after: must be >= 0, got -1"
    assert not (tmp_path / "w").exists()
    with pytest.raises(ValueError, match="stop_after must be >= 0, got -1"):
        train(make_config("smoke"), tmp_path / "w", progress=False, stop_after=-1)
    assert not (tmp_path / "w").exists()


def test_nan_loss_names_the_step(tmp_path):
    config = make_config("smoke", ["learning_rate=1e30", "steps=6"])
    with pytest.raises(TrainingError, match=r"NaN or inf at step \d"):
        train(config, tmp_path / "run", progress=False)


def test_fine_tuning_starts_from_another_run(tmp_path):
    train(make_config("smoke", ["steps=3"]), tmp_path / "source", progress=False)
    config = make_config(
        "smoke", ["steps=1", f"init_from={tmp_path / 'source'}", "objective=rotation"]
    )
    train(config, tmp_path / "tuned", progress=False)
    source, _ = load_run(tmp_path / "source")
    tuned_start, _ = load_run(tmp_path / "tuned", 0)
    np.testing.assert_array_equal(
        source.conv1.conv.kernel.get_value(), tuned_start.conv1.conv.kernel.get_value()
    )
    assert tuned_start.classifier.kernel.get_value().shape[-1] == 4


def _gradient_terms(config, name: str, shapes: dict[str, tuple[int, ...]]) -> int:
    """How many rounded sums feed one element of the gradient of tensor ``name``.

    Its own reduction over the batch and the layer's output positions (conv1 has stride 2,
    conv2 follows one 2x2 pooling, conv3.. two: see train.models), plus every dot product
    of the forward pass (kernel fan-in) and of the backward pass (fan-out) that computes
    the activations and back-propagated errors it multiplies.
    """
    layer = name.split("/")[0]
    downsampling = {"conv1": 2, "conv2": 4}.get(layer, 8)
    positions = (config.image_size // downsampling) ** 2 if layer.startswith("conv") else 1
    chain = sum(
        int(np.prod(shape[:-1])) + int(np.prod(shape[:-2])) * shape[-1]
        for key, shape in shapes.items()
        if key.endswith("kernel")
    )
    return config.batch_size * positions + chain


# One training step's gradients, from the loop's own jitted step, on 8 fake devices (the
# batch sharded, as train() places it) and on device 0 alone, in float64; and the
# per-example gradients' magnitudes. Printed as an .npz path.
_SHARDED_GRADIENTS = """
import sys
import jax, jax.numpy as jnp, numpy as np, optax
jax.config.update("jax_enable_x64", True)
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from train.config import make_config
from train.loop import PREPROCESS, _augment, make_train_step
from train.models import build_model
from train.state import split

config = make_config("smoke", ["dropout=false"])
graphdef, params, rest = split(build_model(config, 10))
params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
# The optimiser's state becomes the gradient it was given; the parameters stay.
capture = optax.GradientTransformation(
    lambda p: jax.tree.map(jnp.zeros_like, p),
    lambda g, state, p=None: (jax.tree.map(jnp.zeros_like, g), g),
)
step = make_train_step(graphdef, capture, config)
rng = np.random.default_rng(0)
size = config.image_size
images = rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8)
labels = rng.integers(0, 10, config.batch_size).astype(np.int32)

def gradient(devices):
    mesh = Mesh(np.array(devices), ("data",))
    place = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    copy = lambda tree: jax.tree.map(lambda x: place(np.array(x), PartitionSpec()), tree)
    out = step(copy(params), copy(rest), copy(jax.tree.map(np.zeros_like, params)),
               place(np.int32(0), PartitionSpec()), place(images, PartitionSpec("data")),
               place(labels, PartitionSpec("data")), 0)
    return jax.tree.map(np.asarray, nnx.to_pure_dict(out[2]))

eight, one = gradient(jax.devices()), gradient(jax.devices()[:1])
assert len(jax.devices()) == 8

# Sum over examples of |per-example gradient| / batch: the magnitude of the terms the
# batch mean adds up (same flips as the step: its key is fold_in(key(seed), 0)).
augment_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 0))
inputs = PREPROCESS(_augment(images, augment_key))

def example_loss(p, x, y):
    model = nnx.merge(graphdef, p, rest, copy=True)
    model.train()
    logits = model(x[None], rngs=nnx.Rngs(dropout=0))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y[None]).mean()

per_example = jax.vmap(jax.grad(example_loss), (None, 0, 0))(params, inputs, labels)
magnitude = jax.tree.map(lambda g: np.abs(np.asarray(g)).mean(0), nnx.to_pure_dict(per_example))
flat = lambda tree, tag: {
    tag + "/" + "/".join(map(str, path)): value
    for path, value in nnx.traversals.flatten_mapping(tree).items()
}
np.savez(sys.argv[1], **flat(eight, "eight"), **flat(one, "one"), **flat(magnitude, "magnitude"))
"""


def _isa_ceilings() -> list[str | None]:
    """Two instruction-set ceilings to emulate two CPUs (x86-64 only: elsewhere, the
    machine's own)."""
    import platform

    return ["SSE4_2", "AVX2"] if platform.machine().lower() in ("x86_64", "amd64") else [None]


@pytest.mark.parametrize("isa", _isa_ceilings())
def test_sharded_step_matches_one_device(tmp_path, isa):
    """The gradient of one step data-parallel on 8 fake devices equals one device's, to
    float64 rounding, under two CPUs' instruction sets.

    Sharding only reorders sums: each device reduces its 2 examples, then the devices'
    partial gradients are summed. Two orders of a sum of n terms differ by at most
    2 gamma_n sum|x_i|, gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability of
    Numerical Algorithms, ch. 4), u = 2**-53 in float64. sum|x_i| is the batch mean of the
    per-example gradients' magnitudes, computed by the test, and its largest element serves
    the whole tensor: an element's per-example gradient is itself a sum over positions
    that may cancel (seen: 5e-10 at an element whose batch sums differ by 2.5e-18), while
    all elements of a tensor sum products of the same activations and errors. n counts
    every rounded sum that feeds an element (_gradient_terms), which also covers the
    per-example forward and backward dot products whose blocking may follow the per-device
    batch size. Measured: the differences stay below 1e-15 times that scale, the bound is
    at least 1e-11 times it.

    The gradient is compared before the optimiser: the earlier test compared parameters
    after several optimiser steps, where a near-zero gradient's rounding can become a
    full-size step of either sign, so no rounding bound held across CPUs. A sharding bug
    changes the gradient by a fraction of itself (a sum instead of a mean over 8 devices: 8
    times; a dropped shard: about 1/8); the last assertion checks that the bound stays a
    million times below the gradient, so such errors cannot pass.
    """
    flags = "--xla_force_host_platform_device_count=8"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    if isa:
        env["XLA_FLAGS"] += f" --xla_cpu_max_isa={isa}"
    out = tmp_path / "gradients.npz"
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED_GRADIENTS, str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    arrays = np.load(out)
    names = [key.split("/", 1)[1] for key in arrays.files if key.startswith("one/")]
    config = make_config("smoke", ["dropout=false"])
    shapes = {name: arrays["one/" + name].shape for name in names}
    assert any(name.endswith("kernel") for name in names)
    u = 2.0**-53
    for name in names:
        one, eight = arrays["one/" + name], arrays["eight/" + name]
        assert one.dtype == np.float64
        n = _gradient_terms(config, name, shapes)
        bound = 2 * n * u / (1 - n * u) * arrays["magnitude/" + name].max()
        difference = np.abs(eight - one).max()
        assert difference <= bound, f"{name}: |g8 - g1| = {difference:.3g} > {bound:.3g}"
        assert bound < np.abs(one).max() / 1e6, f"{name}: bound {bound:.3g} too loose"


def test_training_is_bit_identical_under_any_isa_at_or_above_the_pin(tmp_path):
    """`python -m train` pins XLA's CPU instruction set (jaxdissect.float_pin), so a machine
    with a wider one (unpinned here: this machine's own ceiling) trains exactly what a
    machine at the pin (XLA_FLAGS naming it) trains."""
    import platform

    from jaxdissect.float_pin import PINNED_CPU_ISA

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the instruction-set ceiling is an x86-64 setting")
    runs = {}
    for name, flags in [("machine", ""), ("pin", f"--xla_cpu_max_isa={PINNED_CPU_ISA}")]:
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
        workdir = tmp_path / name
        result = subprocess.run(
            [sys.executable, "-c", _CLI, "--workdir", str(workdir), *_SMOKE],
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        runs[name] = (_params(load_run(workdir)[0]), (workdir / "metrics.jsonl").read_text())
    assert runs["machine"][1] == runs["pin"][1]
    for machine, pinned in zip(runs["machine"][0], runs["pin"][0], strict=True):
        np.testing.assert_array_equal(machine, pinned)


def test_a_second_run_of_the_same_workdir_is_refused(tmp_path):
    """Issue 27: two runs of one workdir at once both finished with exit 0, each record of
    metrics.jsonl written twice and the checkpoints written by both."""
    import fcntl

    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / ".lock", "w") as held:  # as a running train() holds it
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(TrainingError) as error:
            train(make_config("smoke", ["steps=1"]), workdir, progress=False)
    assert str(error.value) == (
        f"{workdir}: in use by a running training run (pid 4242); wait for it or use "
        "another --workdir"
    )
    assert sorted(p.name for p in workdir.iterdir()) == [".lock"]
    train(make_config("smoke", ["steps=1"]), workdir, progress=False)  # released: it runs
    assert list_checkpoints(workdir) == [0, 1]


def test_an_override_given_twice_is_refused(tmp_path, capsys):
    """Issue 27: `steps=5 steps=6` trained 6 steps, the first silently ignored."""
    from train.__main__ import main

    with pytest.raises(SystemExit) as exit:
        main([*_SMOKE, "--workdir", str(tmp_path / "w"), "steps=5", "width=0.5", "steps=6"])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == "python -m train: error: overrides set steps more than once"
    assert not (tmp_path / "w").exists()


def test_an_error_naming_a_workdir_with_a_line_break_stays_one_line(tmp_path, capsys):
    from train.__main__ import main

    workdir = tmp_path / "a\nb"
    workdir.write_text("mine")
    assert main([*_SMOKE, "--workdir", str(workdir)]) == 2
    assert (
        capsys.readouterr().err
        == f"train: error: --workdir {tmp_path}/a\\nb: a file, not a folder\n"
    )


def test_forged_files_of_a_run_fail_in_one_line_naming_them(tmp_path, capsys):
    """Issue 27: metrics.jsonl not UTF-8 failed naming no file; a line, checkpoints.sha256.json
    or config.json nested too deeply, and an init_from run whose run.json lacks num_classes
    or whose config.json has an unknown field, ended in tracebacks."""
    import shutil

    from train.__main__ import main

    run = tmp_path / "run"

    def go(workdir, *extra):
        return main([*_SMOKE, "--workdir", str(workdir), "steps=2", "checkpoint_steps=0,2", *extra])

    assert go(run) == 0
    deep = "[" * 100_000 + "]" * 100_000
    cases = [
        ("metrics.jsonl", b"\xff\n", "not UTF-8"),
        ("metrics.jsonl", f"{deep}\n{{}}\n".encode(), "line 1: not a JSON record"),
        ("checkpoints.sha256.json", deep.encode(), "unreadable (maximum recursion"),
        ("config.json", deep.encode(), "not a training config"),
        ("run.json", b"{}", "num_classes None is not a count"),
        ("run.json", deep.encode(), "unreadable (maximum recursion"),
    ]
    for number, (name, content, problem) in enumerate(cases):
        copy = tmp_path / f"copy{number}"
        shutil.copytree(run, copy)
        (copy / name).write_bytes(content)
        capsys.readouterr()
        if name == "run.json":  # read when another run starts from this one
            assert go(tmp_path / f"new{number}", f"init_from={copy}") == 2
        else:
            assert go(copy) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"train: error: {copy / name}") and problem in error, error
        assert error.count("\n") == 1
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "bogus": 1}))
    assert go(tmp_path / "new", f"init_from={run}") == 2
    assert "unexpected keyword argument 'bogus'" in capsys.readouterr().err
