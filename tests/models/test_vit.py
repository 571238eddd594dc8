"""Vision transformers: the zoo's ViTs against PyTorch computations of the same randomly
initialised networks in torchvision's and timm's layouts (PyTorch being optional, those
tests skip without it), a torch-free round trip through the project's own checkpoint
writer, refused layouts, and patch tokens as maps with the class token left out."""

import collections

import numpy as np
import pytest
from flax import nnx
from test_torch_weights import _state, _write

from jaxdissect import DissectError
from jaxdissect.models import zoo
from jaxdissect.models.features import Preprocess, patch_token_maps
from jaxdissect.models.torch_weights import load_state_dict

SMALL = dict(image_size=32, patch=8, depth=3, width=64, heads=4, hidden=128, num_classes=10)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _torch_vit(torch, layout, image_size, patch, depth, width, heads, hidden, num_classes):
    """A ViT in plain PyTorch whose state-dict names are torchvision's VisionTransformer's
    (layout "torchvision") or timm's (layout "timm"), randomly initialised. Its forward
    returns {layer: tokens} for every block's output, attention output and MLP hidden units,
    and the logits."""
    tokens = 1 + (image_size // patch) ** 2
    build = _torchvision_vit if layout == "torchvision" else _timm_vit
    model, parts, blocks, final, head = build(
        torch, tokens, patch, depth, width, heads, hidden, num_classes
    )
    with torch.no_grad():  # every parameter away from its structured initial value
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))

    def forward(x):
        conv, class_token, pos_embedding = parts
        x = conv(x).flatten(2).transpose(1, 2)
        x = torch.cat([class_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embedding
        out = {}
        for index, block in enumerate(blocks):
            x, out[f"block{index}.attn"], out[f"block{index}.mlp"] = block(x)
            out[f"block{index}"] = x
        out["logits"] = head(final(x)[:, 0])
        return out

    return model, forward


def _torchvision_vit(torch, tokens, patch, depth, width, heads, hidden, num_classes):
    """torchvision's layout: (model, (patch conv, class token, position embedding), blocks,
    final norm, head); each block returns (output, attention output, MLP hidden units)."""
    nn = torch.nn

    class TorchvisionBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(width, eps=1e-6)
            self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
            self.ln_2 = nn.LayerNorm(width, eps=1e-6)
            self.mlp = nn.Sequential(
                nn.Linear(width, hidden), nn.GELU(), nn.Dropout(), nn.Linear(hidden, width)
            )

        def forward(self, x):
            y = self.ln_1(x)
            attn = self.self_attention(y, y, y, need_weights=False)[0]
            x = x + attn
            mlp = self.mlp[1](self.mlp[0](self.ln_2(x)))
            return x + self.mlp[3](mlp), attn, mlp

    model = nn.Module()
    model.conv_proj = nn.Conv2d(3, width, patch, patch)
    model.class_token = nn.Parameter(torch.zeros(1, 1, width))
    model.encoder = nn.Module()
    model.encoder.pos_embedding = nn.Parameter(torch.zeros(1, tokens, width))
    model.encoder.layers = nn.Sequential(
        collections.OrderedDict((f"encoder_layer_{i}", TorchvisionBlock()) for i in range(depth))
    )
    model.encoder.ln = nn.LayerNorm(width, eps=1e-6)
    model.heads = nn.Sequential(collections.OrderedDict(head=nn.Linear(width, num_classes)))
    parts = (model.conv_proj, model.class_token, model.encoder.pos_embedding)
    return model, parts, model.encoder.layers, model.encoder.ln, model.heads.head


def _timm_vit(torch, tokens, patch, depth, width, heads, hidden, num_classes):
    """timm's layout, returned as ``_torchvision_vit``'s."""
    nn = torch.nn

    class TimmAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)

        def forward(self, x):
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
            weights = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
            return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))

    class TimmMlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(width, hidden)
            self.fc2 = nn.Linear(hidden, width)

    class TimmBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(width, eps=1e-6)
            self.attn = TimmAttention()
            self.norm2 = nn.LayerNorm(width, eps=1e-6)
            self.mlp = TimmMlp()

        def forward(self, x):
            attn = self.attn(self.norm1(x))
            x = x + attn
            mlp = nn.functional.gelu(self.mlp.fc1(self.norm2(x)))
            return x + self.mlp.fc2(mlp), attn, mlp

    model = nn.Module()
    model.patch_embed = nn.Module()
    model.patch_embed.proj = nn.Conv2d(3, width, patch, patch)
    model.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    model.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
    model.blocks = nn.Sequential(*(TimmBlock() for _ in range(depth)))
    model.norm = nn.LayerNorm(width, eps=1e-6)
    model.head = nn.Linear(width, num_classes)
    parts = (model.patch_embed.proj, model.cls_token, model.pos_embed)
    return model, parts, model.blocks, model.norm, model.head


def _compare_with_torch(tmp_path, layout, ours, images, size, layers, mean=MEAN, std=STD):
    """Saves the torch model's state dict, imports it through ``ours(path)`` (a
    FeatureModel) and compares every layer in ``layers`` with torch's in float64."""
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
    torch.manual_seed(0)
    model, forward = _torch_vit(torch, layout, **size)
    path = tmp_path / f"{layout}.pth"
    torch.save(model.state_dict(), path)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    model.double()  # a float64 reference: the differences are our float32 rounding alone
    with torch.no_grad():
        expected = forward(x.double())
    got = ours(path)(images, layers)
    grid = size["image_size"] // size["patch"]
    for layer in layers:
        want = expected[layer].numpy()
        if layer != "logits":  # patch tokens as a map, the class token left out
            want = want[:, 1:].reshape(len(images), grid, grid, -1)
        assert got[layer].shape == want.shape, layer
        # float32 rounding grows with the values' scale: 1e-5 of the layer's largest value
        # is 84 float32 epsilons; measured at most 1.7e-6 of it (vit_s_16's logits, 14
        # epsilons) over the four models here, room for other summation orders.
        tolerance = 1e-5 * np.abs(want).max()
        np.testing.assert_allclose(got[layer], want, atol=tolerance, rtol=0, err_msg=layer)


def _small_feature_model(path):
    model = zoo.VisionTransformer(**SMALL, rngs=nnx.Rngs(1))
    state = load_state_dict(path)
    zoo.load_torch_weights(model, state, zoo.ZOO["vit_b_16"].rules, str(path))
    model.eval()
    return zoo.as_feature_model(model, Preprocess(), "small")


@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_small_vit_matches_pytorch_at_every_layer(tmp_path, layout):
    layers = (*zoo.vit_layers(SMALL["depth"]), "logits")
    _compare_with_torch(tmp_path, layout, _small_feature_model, _images(3, 32), SMALL, layers)


def test_zoo_vit_b_16_matches_torchvision_layout(tmp_path):
    size = dict(image_size=224, patch=16, depth=12, width=768, heads=12, hidden=3072)
    layers = ("block0", "block5.mlp", "block11.attn", "block11", "logits")
    _compare_with_torch(
        tmp_path,
        "torchvision",
        lambda path: zoo.feature_model("vit_b_16", path),
        _images(1, 224, seed=2),
        {**size, "num_classes": 1000},
        layers,
    )


def test_zoo_vit_s_16_matches_timm_layout(tmp_path):
    size = dict(image_size=224, patch=16, depth=12, width=384, heads=6, hidden=1536)
    layers = ("block2", "block6.mlp", "block9.attn", "block11", "logits")
    _compare_with_torch(
        tmp_path,
        "timm",
        lambda path: zoo.feature_model("vit_s_16", path),
        _images(2, 224, seed=3),
        {**size, "num_classes": 1000},
        layers,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def _torchvision_arrays(rng, depth=3, width=64, hidden=128, patch=8, tokens=17, classes=10):
    """torchvision's ViT state dict for SMALL, names spelled out here, random values."""
    shapes = {
        "conv_proj.weight": (width, 3, patch, patch),
        "conv_proj.bias": (width,),
        "class_token": (1, 1, width),
        "encoder.pos_embedding": (1, tokens, width),
    }
    for i in range(depth):
        prefix = f"encoder.layers.encoder_layer_{i}"
        shapes |= {
            f"{prefix}.ln_1.weight": (width,),
            f"{prefix}.ln_1.bias": (width,),
            f"{prefix}.self_attention.in_proj_weight": (3 * width, width),
            f"{prefix}.self_attention.in_proj_bias": (3 * width,),
            f"{prefix}.self_attention.out_proj.weight": (width, width),
            f"{prefix}.self_attention.out_proj.bias": (width,),
            f"{prefix}.ln_2.weight": (width,),
            f"{prefix}.ln_2.bias": (width,),
            f"{prefix}.mlp.0.weight": (hidden, width),
            f"{prefix}.mlp.0.bias": (hidden,),
            f"{prefix}.mlp.3.weight": (width, hidden),
            f"{prefix}.mlp.3.bias": (width,),
        }
    shapes |= {
        "encoder.ln.weight": (width,),
        "encoder.ln.bias": (width,),
        "heads.head.weight": (classes, width),
        "heads.head.bias": (classes,),
    }
    return {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in shapes.items()}


def _timm_name(name):
    """The timm name of a torchvision ViT parameter, by hand."""
    for old, new in [
        ("conv_proj.", "patch_embed.proj."),
        ("class_token", "cls_token"),
        ("encoder.pos_embedding", "pos_embed"),
        ("encoder.layers.encoder_layer_", "blocks."),
        ("ln_1", "norm1"),
        ("ln_2", "norm2"),
        ("self_attention.in_proj_weight", "attn.qkv.weight"),
        ("self_attention.in_proj_bias", "attn.qkv.bias"),
        ("self_attention.out_proj", "attn.proj"),
        ("mlp.0", "mlp.fc1"),
        ("mlp.3", "mlp.fc2"),
        ("encoder.ln", "norm"),
        ("heads.head", "head"),
    ]:
        name = name.replace(old, new)
    return name


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_round_trip_through_the_projects_writer_in_both_namings(tmp_path, fmt):
    arrays = _torchvision_arrays(np.random.default_rng(0))
    outputs = {}
    for naming in ("torchvision", "timm"):
        named = arrays if naming == "torchvision" else {_timm_name(k): v for k, v in arrays.items()}
        path = tmp_path / f"{naming}.pth"
        _write(path, *_state(named, legacy=fmt == "legacy"), fmt)
        model = _small_feature_model(path)
        outputs[naming] = model(_images(2, 32), ("block1.mlp", "logits"))
    graph = zoo.VisionTransformer(**SMALL, rngs=nnx.Rngs(1))
    zoo.load_torch_weights(graph, arrays, zoo.ZOO["vit_b_16"].rules, "arrays")
    block = graph.block2
    np.testing.assert_array_equal(graph.class_token[...], arrays["class_token"])
    np.testing.assert_array_equal(graph.pos_embedding[...], arrays["encoder.pos_embedding"])
    np.testing.assert_array_equal(
        graph.patch_embed.kernel[...], arrays["conv_proj.weight"].transpose(2, 3, 1, 0)
    )
    prefix = "encoder.layers.encoder_layer_2"
    np.testing.assert_array_equal(
        block.attn.qkv.kernel[...], arrays[f"{prefix}.self_attention.in_proj_weight"].T
    )
    np.testing.assert_array_equal(block.ln_2.scale[...], arrays[f"{prefix}.ln_2.weight"])
    np.testing.assert_array_equal(block.fc2.kernel[...], arrays[f"{prefix}.mlp.3.weight"].T)
    # Both namings give the same network.
    for layer in ("block1.mlp", "logits"):
        np.testing.assert_array_equal(outputs["torchvision"][layer], outputs["timm"][layer])


def test_other_layouts_are_refused_with_the_names_that_do_not_fit():
    arrays = _torchvision_arrays(np.random.default_rng(0))
    model = zoo.VisionTransformer(**SMALL, rngs=nnx.Rngs(1))
    rules = zoo.ZOO["vit_b_16"].rules
    hugging_face = {"vit.embeddings.cls_token": arrays["class_token"], **arrays}
    del hugging_face["class_token"]
    with pytest.raises(
        DissectError,
        match=r"^hf: these weights do not fit the model: unexpected tensor "
        r"vit\.embeddings\.cls_token; missing tensor for class_token$",
    ):
        zoo.load_torch_weights(model, hugging_face, rules, "hf")
    mixed = {**arrays, "cls_token": arrays["class_token"]}  # two namings in one file
    with pytest.raises(DissectError, match=r"cls_token: a second tensor for class_token"):
        zoo.load_torch_weights(model, mixed, rules, "mixed")
    deeper = {**arrays, "encoder.layers.encoder_layer_3.ln_1.weight": arrays["encoder.ln.weight"]}
    with pytest.raises(
        DissectError, match=r"unexpected tensor encoder\.layers\.encoder_layer_3\.ln_1\.weight$"
    ):
        zoo.load_torch_weights(model, deeper, rules, "deeper")


def test_patch_tokens_become_maps_without_the_class_token():
    tokens = np.arange(2 * 7 * 3).reshape(2, 7, 3)  # 1 class token + 2 x 3 patches
    maps = patch_token_maps(4)("x", tokens, (2, 8, 12, 3))
    assert maps.shape == (2, 2, 3, 3)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                np.testing.assert_array_equal(maps[b, i, j], tokens[b, 1 + i * 3 + j])
    with pytest.raises(DissectError, match=r"layer 'x' gives shape \(2, 7, 3\); expected"):
        patch_token_maps(4)("x", tokens, (2, 8, 8, 3))


def test_vit_layers_shapes_and_refused_input_size():
    model = zoo.VisionTransformer(**SMALL, rngs=nnx.Rngs(0))
    model.eval()
    features = zoo.as_feature_model(model, Preprocess(), "small")
    assert features.layer_names == (
        *(f"block{i}{part}" for i in range(3) for part in ("", ".attn", ".mlp")),
        "logits",
    )
    out = features(_images(2, 32), ("block0", "block2.mlp", "block1.attn", "logits"))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "block0": (2, 4, 4, 64),
        "block2.mlp": (2, 4, 4, 128),
        "block1.attn": (2, 4, 4, 64),
        "logits": (2, 10),
    }
    with pytest.raises(DissectError, match=r"a 48x48 input gives 36 patches; .* for 16"):
        features(_images(1, 48), ("block0",))
    with pytest.raises(DissectError, match=r"has no layer 'block0\.ln_1'"):
        features(_images(1, 32), ("block0.ln_1",))
