"""Static settings carried by a statistic's state without becoming array leaves.

The constructors ``quantile_statistic``, ``tally_statistic`` and ``top_images_statistic``
close over their settings (q, k, shapes) as optax's transformations do. Their states also
hold those settings as a ``Settings`` node: a pytree node with no leaves whose value lives in
the tree structure (aux data). It costs nothing under ``jax.jit`` (it is static, part of the
trace's key), never reaches a device, and lets ``merge`` refuse a state made with other
settings instead of silently combining them.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxdissect.errors import DissectError


@jax.tree_util.register_pytree_node_class
class Settings:
    """A leafless pytree node holding hashable settings, e.g. ``(("q", 0.005), ...)``."""

    def __init__(self, value: tuple):
        self.value = value

    def tree_flatten(self):
        return (), self.value

    @classmethod
    def tree_unflatten(cls, value, children):
        del children
        return cls(value)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Settings) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self.value)})"


def check_settings(what: str, expected: Settings, *states_settings: Any) -> None:
    """Raises DissectError unless every state's settings equal ``expected``; it names the
    argument as the statistic's functions spell it: ``state``, or ``a`` / ``b`` of merge."""
    names = ("state",) if len(states_settings) == 1 else ("a", "b")
    for name, found in zip(names, states_settings, strict=False):
        if found != expected:
            raise DissectError(
                f"{what}: `{name}` was made with other settings ({found!r}) and cannot be "
                f"combined with this statistic ({expected!r}); make every state with the same "
                "constructor settings",
                arguments=(name,),
            )
