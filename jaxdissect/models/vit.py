"""Vision transformers in Flax NNX with torchvision's and timm's structure (ViT-B/16,
ViT-S/16), and the layers dissected in them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdissect.errors import DissectError
from jaxdissect.models.layers import Identity, conv_layer, dropout


class ViTAttention(nnx.Module):
    """Multi-head self-attention, returning what is added to the residual stream. ``qkv`` is
    torchvision's ``in_proj`` and timm's ``qkv``: queries, keys, then values, each split
    into heads."""

    def __init__(self, width, heads, *, rngs, kernel_init=None):
        init = {} if kernel_init is None else {"kernel_init": kernel_init}
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs, **init)
        self.proj = nnx.Linear(width, width, rngs=rngs, **init)

    def __call__(self, x):
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads)
        out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return self.proj(out.reshape(batch, tokens, width))


class ViTMlpHidden(nnx.Module):
    """The MLP's first linear layer and GELU (exact, as PyTorch's): its hidden units."""

    def __init__(self, width, hidden, *, rngs, kernel_init=None):
        init = {} if kernel_init is None else {"kernel_init": kernel_init}
        self.fc1 = nnx.Linear(width, hidden, rngs=rngs, **init)

    def __call__(self, x):
        return jax.nn.gelu(self.fc1(x), approximate=False)


class ViTBlock(nnx.Module):
    """A pre-norm encoder block: x + attn(ln_1(x)), then + fc2(mlp(ln_2(x)))."""

    def __init__(self, width, heads, hidden, dropout_rate=0.0, *, rngs, kernel_init=None):
        init = {} if kernel_init is None else {"kernel_init": kernel_init}
        self.ln_1 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.attn = ViTAttention(width, heads, rngs=rngs, kernel_init=kernel_init)
        self.ln_2 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.mlp = ViTMlpHidden(width, hidden, rngs=rngs, kernel_init=kernel_init)
        self.fc2 = nnx.Linear(hidden, width, rngs=rngs, **init)
        self.dropout = nnx.Dropout(dropout_rate) if dropout_rate else Identity()

    def __call__(self, x, rngs=None):
        x = x + dropout(self.dropout, self.attn(self.ln_1(x)), rngs)
        hidden = dropout(self.dropout, self.mlp(self.ln_2(x)), rngs)
        return x + dropout(self.dropout, self.fc2(hidden), rngs)


class VisionTransformer(nnx.Module):
    """torchvision's and timm's ViT (class token, learned position embeddings, pre-norm
    blocks, the class token's final state to the head), for square images of
    ``image_size`` (the position embeddings fix it) cut into ``patch`` x ``patch`` patches.
    Blocks are ``block0`` .. ``block{depth - 1}``."""

    def __init__(
        self,
        image_size=224,
        patch=16,
        depth=12,
        width=768,
        heads=12,
        hidden=3072,
        num_classes=1000,
        dropout_rate=0.0,
        *,
        rngs,
        kernel_init=None,
    ):
        if width % heads:
            raise DissectError(f"a ViT's width {width} must be a multiple of its heads {heads}")
        self.patch, self.depth = patch, depth
        self.patch_embed = conv_layer(3, width, patch, patch, rngs=rngs, kernel_init=kernel_init)
        self.class_token = nnx.Param(jnp.zeros((1, 1, width)))
        tokens = 1 + (image_size // patch) ** 2
        self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, width)))
        for index in range(depth):
            block = ViTBlock(width, heads, hidden, dropout_rate, rngs=rngs, kernel_init=kernel_init)
            setattr(self, f"block{index}", block)
        self.ln = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x, rngs=None):
        x = self.patch_embed(x)
        batch, height, width, channels = x.shape
        expected = self.pos_embedding.shape[1] - 1
        if height * width != expected:
            raise DissectError(
                f"a {x.shape[1] * self.patch}x{x.shape[2] * self.patch} input gives "
                f"{height * width} patches; this ViT's position embeddings are for {expected}"
            )
        x = x.reshape(batch, height * width, channels)
        cls = jnp.broadcast_to(self.class_token[...], (batch, 1, channels))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...]
        for index in range(self.depth):
            x = getattr(self, f"block{index}")(x, rngs=rngs)
        return self.head(self.ln(x)[:, 0])


def vit_layers(depth: int) -> tuple[str, ...]:
    """A ViT's dissectable layers, block by block."""
    return tuple(f"block{i}{part}" for i in range(depth) for part in ("", ".attn", ".mlp"))
