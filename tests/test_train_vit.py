"""train/ with family=vit: it trains on the synthetic world, checkpoints on the schedule,
resumes to bit-identical parameters, is dissectable block by block, and refuses settings a
ViT would otherwise ignore."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from train.checkpoints import feature_model, list_checkpoints, load_run
from train.config import make_config
from train.loop import train
from train.models import build_model, dissectable_layers

VIT = ["family=vit", "depth=2", "patch=8", "heads=2", "mlp_ratio=2"]


@pytest.fixture(autouse=True)
def _shared_data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path_factory.getbasetemp() / "train-cache"))


def _params(model):
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model)))


def test_vit_trains_resumes_bit_identically_and_is_dissectable(tmp_path):
    config = make_config("smoke", [*VIT, "steps=8", "checkpoint_steps=0,3,8"])
    whole = train(config, tmp_path / "whole", progress=False)
    assert whole["step"] == 8 and list_checkpoints(tmp_path / "whole") == [0, 3, 8]
    lines = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval_accuracy" in x] == [0, 3, 8]
    assert all(np.isfinite(x["loss"]) for x in lines if "loss" in x)
    assert train(config, tmp_path / "resumed", progress=False, stop_after=5)["checkpoints"] == [
        0,
        3,
    ]
    train(config, tmp_path / "resumed", progress=False)
    for step in (3, 8):
        a, _ = load_run(tmp_path / "whole", step)
        b, _ = load_run(tmp_path / "resumed", step)
        for x, y in zip(_params(a), _params(b), strict=True):
            np.testing.assert_array_equal(x, y)
    first, last = load_run(tmp_path / "whole", 0)[0], load_run(tmp_path / "whole", 8)[0]
    assert any(not np.array_equal(x, y) for x, y in zip(_params(first), _params(last), strict=True))
    # Width 0.25 of 256 channels is 64; MLPs twice that; 32 px in 8 px patches is 4 x 4.
    assert dissectable_layers(config) == ("block0", "block1")
    model = feature_model(tmp_path / "whole")
    out = model(np.zeros((2, 32, 32, 3), np.uint8), ("block1", "block1.mlp", "block0.attn"))
    assert {k: v.shape for k, v in out.items()} == {
        "block1": (2, 4, 4, 64),
        "block1.mlp": (2, 4, 4, 128),
        "block0.attn": (2, 4, 4, 64),
    }


def test_vit_dropout_follows_the_config():
    on = build_model(make_config("smoke", VIT), 4)
    off = build_model(make_config("smoke", [*VIT, "dropout=false"]), 4)
    assert isinstance(on.block0.dropout, nnx.Dropout) and on.block0.dropout.rate == 0.1
    assert not isinstance(off.block0.dropout, nnx.Dropout)


@pytest.mark.parametrize(
    "override,field",
    [
        ("patch=5", r"patch=5 \(must divide image_size\)"),  # 32 px: no whole 5 px patches
        ("batch_norm=true", r"batch_norm=True \(a ViT has no batch norm\)"),
        ("last_width=3", r"last_width=3.0 \(a CNN-only field\)"),
    ],
)
def test_vit_refuses_settings_it_cannot_honour(override, field):
    with pytest.raises(ValueError, match=rf"invalid training config: {field}"):
        make_config("smoke", [*VIT, override])


def test_a_cnn_config_json_has_no_vit_fields():
    # Workdirs of CNN runs made before ViTs existed hold no such keys; they must resume.
    values = json.loads(make_config("smoke").to_json())
    assert not {"patch", "heads", "mlp_ratio"} & set(values)
    assert {"patch": 8, "heads": 2, "mlp_ratio": 2.0}.items() <= json.loads(
        make_config("smoke", VIT).to_json()
    ).items()


def test_training_dynamics_accepts_vit_variations(tmp_path):
    from experiments import training_dynamics

    workdir = tmp_path / "td"
    args = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    assert training_dynamics.main([*args, "variations=vit", "layer=block3", "steps=2"]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert list(results["curves"]) == ["vit"]
    # Width 0.25 of 256 channels: 64 units per block; checkpoints at 0, 1 and 2.
    assert [(p["step"], p["num_units"]) for p in results["curves"]["vit"]] == [
        (0, 64),
        (1, 64),
        (2, 64),
    ]
    for seed in results["seeds"]:
        dissected = workdir / "dissections" / "vit" / f"seed{seed}" / "2" / "block3"
        assert len(json.loads((dissected / "results.json").read_text())["units"]) == 64


def test_vit_fine_tunes_all_but_its_head(tmp_path):
    source = make_config("smoke", [*VIT, "steps=2", "checkpoint_steps=0,2"])
    train(source, tmp_path / "source", progress=False)
    # Rotation has 4 classes, the scenes more: the head cannot be copied and is not.
    tuned = make_config(
        "smoke",
        [*VIT, "steps=1", "checkpoint_steps=0,1", "objective=rotation"],
        init_from=str(tmp_path / "source"),
    )
    train(tuned, tmp_path / "tuned", progress=False)
    start, _ = load_run(tmp_path / "tuned", 0)
    trained, _ = load_run(tmp_path / "source", 2)
    np.testing.assert_array_equal(
        start.block1.mlp.fc1.kernel[...], trained.block1.mlp.fc1.kernel[...]
    )
    assert start.head.kernel.shape[-1] == 4 != trained.head.kernel.shape[-1]
