"""A user's model for the ``--model package.module:factory`` contract test."""

from flax import nnx

from jaxdissect.models.features import Preprocess, from_nnx


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.conv_a = nnx.Conv(3, 6, (3, 3), strides=2, rngs=rngs)
        self.conv_b = nnx.Conv(6, 4, (3, 3), rngs=rngs)

    def __call__(self, x):
        return self.conv_b(nnx.relu(self.conv_a(x)))


def factory(weights):
    assert weights is None
    return from_nnx(Tiny(nnx.Rngs(0)), Preprocess(), name="tiny")


def not_a_feature_model(weights):
    return Tiny(nnx.Rngs(0))


def seeded_factory(weights):
    """A "checkpoint" is a text file holding the seed of the parameters."""
    seed = int(open(weights).read()) if weights is not None else 0
    return from_nnx(Tiny(nnx.Rngs(seed)), Preprocess(), name="tiny")


class Other(nnx.Module):
    def __init__(self, rngs):
        self.conv_a = nnx.Conv(3, 5, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x):
        return self.conv_a(x)


def other_factory(weights):
    return from_nnx(Other(nnx.Rngs(0)), Preprocess(), name="tiny")


# What ``changing`` returns: a test changes it between two runs of the same --model spec.
SEED = 0


def changing(weights):
    """The same name whatever it computes: only SEED tells two of its models apart."""
    assert weights is None
    return from_nnx(Tiny(nnx.Rngs(SEED)), Preprocess(), name="changing")


def poisoned(weights):
    """A model whose weights are NaN, as a damaged file would make them."""
    model = Tiny(nnx.Rngs(0))
    model.conv_b.kernel.set_value(model.conv_b.kernel.get_value() * float("nan"))
    return from_nnx(model, Preprocess(), name="poisoned")


def broken(weights):
    """A factory with a bug of its own."""
    raise KeyError("conv_c")
