"""Model capture (NNX, Linen, plain function), the zoo, and PyTorch weight import.

The ResNet-20 comparison needs PyTorch (an optional test dependency: `make test` installs
it where pip can) and ../shared/models (the 1 MB pretrained file, not vendored)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

from jaxdissect import DissectError
from jaxdissect.models import torch_import, zoo
from jaxdissect.models.features import Preprocess, from_function, from_linen, from_nnx
from jaxdissect.models.torch_weights import load_state_dict

WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "models" / "resnet20-12fca82f.th"
IDENTITY = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0)


def _images(n=3, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class TwoConvs(nnx.Module):
    def __init__(self, rngs):
        self.first = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.second = nnx.Conv(4, 5, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x):
        return self.second(jax.nn.relu(self.first(x))).mean(axis=(1, 2))


def test_nnx_capture_equals_calling_layers_by_hand():
    model = TwoConvs(nnx.Rngs(0))
    extractor = from_nnx(model, IDENTITY)
    assert extractor.layer_names == ("first", "second", "logits")
    images = _images()
    out = extractor(images, ("first", "second", "logits"))
    x = jnp.asarray(images, jnp.float32)
    first = model.first(x)
    second = model.second(jax.nn.relu(first))
    np.testing.assert_allclose(out["first"], first, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["second"], second, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["logits"], second.mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
    assert type(model.first) is nnx.Conv  # the user's module is untouched


def test_preprocessing_is_applied_once():
    calls = []

    def fn(params, x):
        calls.append(x)
        return {"x": x}

    pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    images = _images()
    out = from_function(fn, {}, ["x"], pre)(images, ["x"])
    # Normalised exactly once (twice would give ((x - 0.5) / 0.25 - 0.5) / 0.25).
    np.testing.assert_allclose(out["x"], (images / 255.0 - 0.5) / 0.25, atol=1e-5)
    assert len(calls) == 1  # traced once


class LinenNet(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = jax.nn.relu(linen.Conv(4, (3, 3), name="conv_a")(x))
        return linen.Conv(2, (3, 3), name="conv_b")(x)


def test_linen_capture_equals_apply_by_hand():
    net = LinenNet()
    images = _images()
    variables = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    extractor = from_linen(net, variables, IDENTITY)
    assert set(extractor.layer_names) == {"conv_a", "conv_b", "logits"}
    out = extractor(images, ("conv_a", "logits"))
    x = jnp.asarray(images, jnp.float32)
    conv_a = linen.Conv(4, (3, 3)).apply({"params": variables["params"]["conv_a"]}, x)
    np.testing.assert_allclose(out["conv_a"], conv_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["logits"], net.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_unknown_layer_lists_the_model_layers():
    extractor = from_nnx(TwoConvs(nnx.Rngs(0)), IDENTITY, name="two")
    with pytest.raises(
        DissectError,
        match="model 'two' has no layer 'third'; its layers are: first, second, logits",
    ):
        extractor(_images(), ["third"])


@pytest.mark.parametrize(
    "name,size,layers",
    [
        ("alexnet", 64, {"conv5": (1, 3, 3, 256), "logits": (1, 1000)}),
        ("vgg16", 32, {"conv5_3": (1, 2, 2, 512), "conv1_1": (1, 32, 32, 64)}),
        ("resnet18", 64, {"layer4": (1, 2, 2, 512), "conv1": (1, 32, 32, 64)}),
        ("resnet50", 64, {"layer4": (1, 2, 2, 2048)}),
        ("resnet20-cifar10", 32, {"layer3": (1, 8, 8, 64), "logits": (1, 10)}),
    ],
)
def test_zoo_layers_and_shapes(name, size, layers):
    model = zoo.feature_model(name)
    out = model(_images(1, size), tuple(layers))
    assert {k: tuple(v.shape) for k, v in out.items()} == layers


@pytest.fixture(scope="module")
def resnet20_weights():
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} is absent (it lives in ../shared, beside CI's checkout)")
    return WEIGHTS


def test_legacy_checkpoint_reads_all_97_tensors(resnet20_weights):
    state = load_state_dict(resnet20_weights)
    assert len(state) == 97
    assert state["conv1.weight"].shape == (16, 3, 3, 3)
    assert state["linear.weight"].shape == (10, 64)


def test_a_zoo_model_from_weights_compiles_nothing_to_build(resnet20_weights):
    """Built abstractly and filled from the file: no random initialiser is compiled (a
    concrete build compiled one per layer shape, 9 s of a 16 s process), and every
    parameter and running statistic holds the file's values."""
    compiled = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        model = zoo.build("resnet20-cifar10", resnet20_weights)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == []
    state = load_state_dict(resnet20_weights)
    np.testing.assert_array_equal(model.conv1.bn.mean.get_value(), state["bn1.running_mean"])
    leaves = jax.tree.leaves(nnx.state(model))
    assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves)


def test_weights_of_another_model_are_refused(resnet20_weights):
    with pytest.raises(DissectError, match="do not fit the model"):
        zoo.build("resnet18", resnet20_weights)


def _torch_resnet20(torch, state):
    """akamaster's ResNet-20, written here in PyTorch, as the reference."""
    F = torch.nn.functional

    def bn(x, name):
        return F.batch_norm(
            x,
            state[f"{name}.running_mean"],
            state[f"{name}.running_var"],
            state[f"{name}.weight"],
            state[f"{name}.bias"],
            False,
            0.0,
            1e-5,
        )

    def block(x, name, stride, planes):
        out = F.relu(
            bn(F.conv2d(x, state[f"{name}.conv1.weight"], stride=stride, padding=1), f"{name}.bn1")
        )
        out = bn(F.conv2d(out, state[f"{name}.conv2.weight"], padding=1), f"{name}.bn2")
        if stride != 1 or x.shape[1] != planes:
            x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
        return F.relu(out + x)

    def forward(x):
        x = F.relu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"))
        outs = {"conv1": x}
        for stage, planes in enumerate((16, 32, 64), start=1):
            for b in range(3):
                x = block(x, f"layer{stage}.{b}", 2 if (b == 0 and stage > 1) else 1, planes)
            outs[f"layer{stage}"] = x
        outs["logits"] = F.linear(x.mean(dim=(2, 3)), state["linear.weight"], state["linear.bias"])
        return outs

    return forward


def test_imported_resnet20_matches_pytorch(resnet20_weights):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
    checkpoint = torch.load(resnet20_weights, map_location="cpu", weights_only=False)
    state = {k.removeprefix("module."): v.float() for k, v in checkpoint["state_dict"].items()}
    images = _images(4, 32, seed=3)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        expected = _torch_resnet20(torch, state)(x)
    ours = zoo.feature_model("resnet20-cifar10", resnet20_weights)(
        images, ("conv1", "layer1", "layer2", "layer3", "logits")
    )
    np.testing.assert_allclose(ours["logits"], expected["logits"].numpy(), atol=1e-4, rtol=0)
    for layer in ("conv1", "layer1", "layer2", "layer3"):
        np.testing.assert_allclose(
            ours[layer], expected[layer].permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0
        )


def test_cli_dissects_zoo_model_layers(probe, tmp_path, capsys):
    import json

    from jaxdissect.cli import main

    out = tmp_path / "out"
    args = [
        "dissect",
        "--dataset",
        str(probe.directory),
        "--model",
        "zoo:resnet20-cifar10",
        "--layer",
        "layer1",
        "--layer",
        "layer3",
        "--out",
        str(out),
        "--no-progress",
        "--batch-size",
        "5",
    ]
    if WEIGHTS.is_file():
        args += ["--weights", str(WEIGHTS)]
    assert main(args) == 0
    for layer, units in (("layer1", 16), ("layer3", 64)):
        results = json.loads((out / layer / "results.json").read_text())
        assert results["layer"] == layer and len(results["units"]) == units
        assert results["model"] == "zoo:resnet20-cifar10"
    # The layer's activations, computed directly, give the same thresholds.
    from jaxdissect import load_image_array, open_broden

    images = load_image_array(open_broden(probe.directory), progress=False)
    acts = np.asarray(
        zoo.feature_model("resnet20-cifar10", WEIGHTS if WEIGHTS.is_file() else None)(
            images, ["layer3"]
        )["layer3"]
    )
    expected = np.quantile(acts.reshape(-1, 64), 1 - 0.005, axis=0)
    results = json.loads((out / "layer3" / "results.json").read_text())
    np.testing.assert_allclose(results["thresholds"], expected, rtol=1e-5, atol=1e-6)


def test_cli_user_factory_and_bad_specs(probe, tmp_path, capsys):
    from jaxdissect.cli import main

    common = [
        "dissect",
        "--dataset",
        str(probe.directory),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    assert main([*common, "--model", "user_model:factory", "--layer", "conv_a"]) == 0
    assert (tmp_path / "o" / "tally.csv").is_file()
    assert main([*common, "--model", "user_model:factory", "--layer", "conv_c"]) == 2
    err = capsys.readouterr().err
    assert "model 'tiny' has no layer 'conv_c'; its layers are: conv_a, conv_b, logits" in err
    assert main([*common, "--model", "user_model:not_a_feature_model", "--layer", "x"]) == 2
    assert "not a jaxdissect.models.features.FeatureModel" in capsys.readouterr().err
    assert main([*common, "--model", "zoo:resnet1000", "--layer", "x"]) == 2
    assert "no zoo model 'resnet1000'; the zoo has: alexnet" in capsys.readouterr().err
    assert main([*common, "--model", "no_such_module:f", "--layer", "x"]) == 2
    assert "cannot import it" in capsys.readouterr().err


def test_cli_features_matches_the_model(tmp_path, capsys):
    from jaxdissect.cli import main

    images = _images(5, 32, seed=1)
    np.save(tmp_path / "images.npy", images)
    args = [
        "features",
        "--model",
        "zoo:resnet20-cifar10",
        "--layer",
        "logits",
        "--images",
        str(tmp_path / "images.npy"),
        "--out",
        str(tmp_path / "logits.npy"),
        "--batch-size",
        "2",
    ]
    if WEIGHTS.is_file():
        args += ["--weights", str(WEIGHTS)]
    assert main(args) == 0
    expected = zoo.feature_model("resnet20-cifar10", WEIGHTS if WEIGHTS.is_file() else None)(
        images, ["logits"]
    )["logits"]
    # Batches of 2 against one of 5: on GPUs convolutions run in TF32 by default.
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=2e-3)
    np.save(tmp_path / "floats.npy", images.astype(np.float32))
    args[args.index(str(tmp_path / "images.npy"))] = str(tmp_path / "floats.npy")
    assert main(args) == 2
    assert "expected uint8 RGB images" in capsys.readouterr().err


def _torchvision_names(name):
    """torchvision's state-dict keys, spelled out here independently of the zoo."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    if name == "alexnet":
        layers = [f"features.{i}" for i in (0, 3, 6, 8, 10)] + [
            f"classifier.{i}" for i in (1, 4, 6)
        ]
        return [f"{layer}.{p}" for layer in layers for p in ("weight", "bias")]
    if name == "vgg16":
        convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
        layers = [f"features.{i}" for i in convs] + [f"classifier.{i}" for i in (0, 3, 6)]
        return [f"{layer}.{p}" for layer in layers for p in ("weight", "bias")]
    names = ["conv1.weight", *(f"bn1.{p}" for p in bn), "fc.weight", "fc.bias"]
    for stage in range(1, 5):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            names += [f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"]
            names += [f"{prefix}.bn{i}.{p}" for i in (1, 2) for p in bn]
            if stage > 1 and block == 0:
                names += [f"{prefix}.downsample.0.weight"]
                names += [f"{prefix}.downsample.1.{p}" for p in bn]
    return names


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "resnet18"])
def test_torchvision_names_cover_every_parameter(name):
    model = zoo.build(name)
    shapes = {}
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, (nnx.Param, nnx.BatchStat)):
            shapes[".".join(map(str, path))] = variable.get_value().shape
    rng = np.random.default_rng(0)
    state = {}
    for key in _torchvision_names(name):
        target, _ = torch_import._rename(key, zoo.ZOO[name].rules)
        prefix, leaf = target.rsplit(".", 1)
        kind = {"bias": "bias", "running_mean": "mean", "running_var": "var"}.get(leaf)
        if leaf == "weight":
            kind = "kernel" if f"{prefix}.kernel" in shapes else "scale"
        if leaf == "num_batches_tracked":
            state[key] = np.array(0)
            continue
        shape = shapes[f"{prefix}.{kind}"]
        torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        state[key] = rng.normal(size=torch_shape).astype(np.float32)
    zoo.load_torch_weights(model, state, zoo.ZOO[name].rules, name)  # raises on any gap
    first = "features.0.weight" if name != "resnet18" else "conv1.weight"
    kernel = (model.conv1_1 if name == "vgg16" else model.conv1).conv.kernel.get_value()
    np.testing.assert_array_equal(kernel, state[first].transpose(2, 3, 1, 0))
