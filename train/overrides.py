"""``key=value`` overrides of a config dataclass: the one parser of ``python -m train`` and
the studies (``python -m experiments.NAME``). A value is typed by its field's annotation."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class OverrideError(ValueError):
    """An override naming no field, or whose value does not parse as its field's type; the
    message quotes the override and names its key."""


def parse_value(kind, text: str):
    """``text`` as a value of ``kind``: bool, int, float, str, ``tuple[T, ...]``
    (comma-separated) or one of those ``| None`` ("" or "none" is None)."""
    if type(None) in typing.get_args(kind):
        if text.lower() in ("", "none"):
            return None
        (kind,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in _TRUE
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return tuple(parse_value(item, part) for part in text.split(",") if part)
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"expected {kind.__name__}, got {text!r}") from None


def apply_overrides(config_type, values: dict, overrides: Sequence[str]) -> dict:
    """``values`` (field name: value of ``config_type``) with ``overrides`` applied.

    A key names a field of ``config_type`` or, as ``section.key``, a field of the config
    dataclass that ``values[section]`` holds (``dissect.union=lite``).

    Raises:
      OverrideError: naming the override and its key.
    """
    values = dict(values)
    nested: dict[str, dict] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.rpartition(".")
        owner = type(values.get(section)) if dot else config_type
        if not dataclasses.is_dataclass(owner):
            known = sorted(k for k, v in values.items() if dataclasses.is_dataclass(v))
            raise OverrideError(
                f"override {item!r}: {section!r} is not a section; sections: {', '.join(known)}"
            )
        fields = sorted(f.name for f in dataclasses.fields(owner))
        if not sep or name not in fields:
            where = f"a field of {section}, " if dot else ""
            raise OverrideError(
                f"override {item!r}: expected key=value with key {where}one of {', '.join(fields)}"
            )
        kind = typing.get_type_hints(owner)[name]
        if dataclasses.is_dataclass(kind):
            raise OverrideError(
                f"override {item!r}: {name} is a section; set its fields as {name}.KEY=VALUE"
            )
        try:
            value = parse_value(kind, text)
        except ValueError as error:
            raise OverrideError(f"override {item!r}: {key}: {error}") from None
        if dot:
            nested.setdefault(section, {})[name] = value
        else:
            values[name] = value
    for section, changes in nested.items():
        values[section] = dataclasses.replace(values[section], **changes)
    return values


def repeated_keys(overrides: Sequence[str]) -> list[str]:
    """The keys that more than one of the command line's ``overrides`` sets: the last would
    win and the others be ignored silently, so the CLIs refuse them. (Programs layer
    overrides on purpose: a study's variation after its shared settings.)"""
    keys = [item.partition("=")[0] for item in overrides]
    return sorted({key for key in keys if keys.count(key) > 1})
