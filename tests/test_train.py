"""train/: each variation trains, checkpoints follow the schedule, restores are exact,
a resumed run equals an uninterrupted one, and the sharded step equals one device's."""

import itertools
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


def _param_tensors(model) -> dict[str, np.ndarray]:
    return {
        "/".join(map(str, path)): np.asarray(value.get_value())
        for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


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


def test_sharded_step_matches_one_device(tmp_path):
    """Four steps data-parallel on 8 fake devices equal four on one, to float32 rounding.

    Sharding only reorders sums: each device reduces its 2 examples, then the devices'
    partial gradients are summed. Two orders of a sum of n terms differ by at most
    2 gamma_n sum|x_i|, gamma_n = n u / (1 - n u), u = 2**-24 (Higham, Accuracy and
    Stability of Numerical Algorithms, ch. 4). A parameter moves by lr_t times the
    momentum-accumulated gradient each step, so a relative error of 2 gamma_n in every
    update adds up to at most 2 gamma_n times its path length sum_t |p_t+1 - p_t|. The
    terms of an element's gradient may cancel (its own path is then short while its
    rounding is not), so the scale S is the tensor's longest path, from the one-device run:
    all elements of a tensor sum products of the same activations and errors.

    A sharding bug moves parameters by a fraction of their path, not a rounding error: a
    gradient summed instead of averaged over 8 devices takes steps 8 times too long, a
    dropped shard's examples move it by about 1/8 of the path. The second assertion checks
    that the bound stays 100 times below the displacement, so such errors cannot pass.
    """
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    overrides = ["steps=4", "checkpoint_steps=0,1,2,3,4"]
    result = subprocess.run(
        [sys.executable, "-c", _CLI, "--workdir", str(tmp_path / "eight"), *_SMOKE, *overrides],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    config = make_config("smoke", overrides)
    train(config, tmp_path / "one", progress=False)
    one = [_param_tensors(load_run(tmp_path / "one", step)[0]) for step in range(5)]
    eight = _param_tensors(load_run(tmp_path / "eight", 4)[0])
    shapes = {name: value.shape for name, value in one[0].items()}
    u = 2.0**-24
    for name, final in eight.items():
        n = _gradient_terms(config, name, shapes)
        gamma = n * u / (1 - n * u)
        path = sum(np.abs(after[name] - before[name]) for before, after in itertools.pairwise(one))
        bound = 2 * gamma * path.max()
        difference = np.abs(final - one[4][name]).max()
        assert difference <= bound, f"{name}: |p8 - p1| = {difference:.3g} > {bound:.3g}"
        displacement = np.abs(one[4][name] - one[0][name]).max()
        assert bound < displacement / 100, f"{name}: bound {bound:.3g} too loose"
