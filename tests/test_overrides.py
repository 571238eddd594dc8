"""The one key=value parser of ``python -m train`` and the studies (train/overrides.py)."""

import dataclasses

import pytest

from train.overrides import OverrideError, apply_overrides


@dataclasses.dataclass(frozen=True, kw_only=True)
class Section:
    images: int = 10
    union: str = "paper"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    steps: int = 5
    rate: float = 0.5
    dropout: bool = True
    seeds: tuple[int, ...] = (0,)
    names: tuple[str, ...] = ()
    limit: int | None = None
    probe: Section = Section()


DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def test_values_are_typed_by_their_fields():
    overrides = ["steps=7", "rate=1e-3", "dropout=no", "seeds=1,2,3", "names=a,b",
                 "limit=none", "probe.images=20", "probe.union=lite"]  # fmt: skip
    config = Config(**apply_overrides(Config, DEFAULTS, overrides))
    assert config == Config(
        steps=7, rate=0.001, dropout=False, seeds=(1, 2, 3), names=("a", "b"), limit=None,
        probe=Section(images=20, union="lite"),
    )  # fmt: skip
    assert apply_overrides(Config, DEFAULTS, ["limit=4"])["limit"] == 4


def test_overrides_leave_the_given_values_alone():
    apply_overrides(Config, DEFAULTS, ["steps=9", "probe.images=1"])
    assert DEFAULTS["steps"] == 5 and DEFAULTS["probe"] == Section()


@pytest.mark.parametrize(
    "override, message",
    [
        ("colour=red", "override 'colour=red': expected key=value with key one of dropout, "
                       "limit, names, probe, rate, seeds, steps"),
        ("steps", "override 'steps': expected key=value with key one of"),
        ("probe.colour=red", "override 'probe.colour=red': expected key=value with key a field "
                             "of probe, one of images, union"),
        ("probes.images=1", "override 'probes.images=1': 'probes' is not a section; sections: "
                            "probe"),
        ("probe=x", "override 'probe=x': probe is a section; set its fields as probe.KEY=VALUE"),
        ("steps=many", "override 'steps=many': steps: expected int, got 'many'"),
        ("rate=fast", "override 'rate=fast': rate: expected float, got 'fast'"),
        ("dropout=maybe", "override 'dropout=maybe': dropout: expected true or false, got "
                          "'maybe'"),
        ("seeds=1,x", "override 'seeds=1,x': seeds: expected int, got 'x'"),
        ("probe.images=1.5", "override 'probe.images=1.5': probe.images: expected int, got "
                             "'1.5'"),
    ],
)  # fmt: skip
def test_errors_quote_the_override_and_name_its_key(override, message):
    with pytest.raises(OverrideError) as raised:
        apply_overrides(Config, DEFAULTS, [override])
    assert str(raised.value).startswith(message)


def test_train_and_the_studies_refuse_alike(capsys):
    """``python -m train`` and a study print the same message for the same bad override."""
    from experiments import rotation
    from train.__main__ import main as train_main

    assert train_main(["--workdir", "unused", "steps=many"]) == 2
    train_error = capsys.readouterr().err.strip()
    with pytest.raises(SystemExit) as exit_info:
        rotation.main(["--config", "smoke", "steps=many"])
    study_error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert train_error == "train: error: override 'steps=many': steps: expected int, got 'many'"
    assert study_error.endswith(": error: override 'steps=many': steps: expected int, got 'many'")
