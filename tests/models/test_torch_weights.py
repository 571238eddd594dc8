"""The PyTorch importer on hostile files: pickles that run code, tensors that reach outside
their storage, storages of the wrong size, zip bombs and integer weights. The files are
written here opcode by opcode (PyTorch is optional); where it is installed, it checks that
the writer makes what ``torch.save`` makes."""

import dataclasses
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jaxdissect.cli import main
from jaxdissect.errors import DissectError
from jaxdissect.models import zoo
from jaxdissect.models.torch_weights import LEGACY_MAGIC, load_state_dict

WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "models" / "resnet20-12fca82f.th"
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
STORAGE_TYPES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.bool_): "BoolStorage",
}


@dataclasses.dataclass
class Global:
    """``module.name`` as the GLOBAL opcode names it, without importing it."""

    module: str
    name: str


@dataclasses.dataclass
class Call:  # REDUCE: func(*args)
    func: Any
    args: tuple


@dataclasses.dataclass
class Persistent:  # BINPERSID: how torch.save refers to a storage
    pid: tuple


@dataclasses.dataclass
class Build:  # BUILD: set obj's state
    obj: Any
    state: Any


def _encode(obj) -> bytes:
    match obj:
        case Global():
            return pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode()
        case Call():
            return _encode(obj.func) + _encode(tuple(obj.args)) + pickle.REDUCE
        case Persistent():
            return _encode(obj.pid) + pickle.BINPERSID
        case Build():
            return _encode(obj.obj) + _encode(obj.state) + pickle.BUILD
        case dict():
            items = (_encode(k) + _encode(v) + pickle.SETITEM for k, v in obj.items())
            return pickle.EMPTY_DICT + b"".join(items)
        case list():
            return pickle.EMPTY_LIST + b"".join(_encode(v) + pickle.APPEND for v in obj)
        case tuple():
            return pickle.MARK + b"".join(map(_encode, obj)) + pickle.TUPLE
        case _:  # str, int, bool, float, None: as pickle writes them, less PROTO and STOP
            return pickle.dumps(obj, protocol=2)[2:-1]


def _pickle(obj) -> bytes:
    return pickle.PROTO + b"\x02" + _encode(obj) + pickle.STOP


def _tensor(key, dtype, numel, size, stride=None, offset=0, legacy=False):
    """What torch.save writes for a tensor: a rebuild call on a persistent storage id."""
    if stride is None:
        stride = tuple(int(np.prod(size[i + 1 :])) for i in range(len(size)))
    pid = ("storage", Global("torch", STORAGE_TYPES[np.dtype(dtype)]), key, "cpu", numel)
    hooks = Call(Global("collections", "OrderedDict"), ())
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    args = (Persistent(pid + (None,) * legacy), offset, tuple(size), tuple(stride), False, hooks)
    return Call(rebuild, args)


def _state(arrays: dict[str, np.ndarray], legacy: bool):
    """The pickled object and the storages (flat arrays by key) for a dict of arrays."""
    obj = {
        name: _tensor(str(i), a.dtype, a.size, a.shape, legacy=legacy)
        for i, (name, a) in enumerate(arrays.items())
    }
    return obj, {str(i): a.ravel() for i, a in enumerate(arrays.values())}


def _write_zip(path, obj, storages, *, pickled=None, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compress) as archive:
        archive.writestr("archive/data.pkl", _pickle(obj) if pickled is None else pickled)
        archive.writestr("archive/version", "3\n")
        for key, flat in storages.items():
            archive.writestr(f"archive/data/{key}", flat.tobytes())


def _write_legacy(path, obj, storages, **parts):
    """The pre-1.6 stream; ``parts`` replaces magic, protocol, sys_info or keys."""
    header = {"magic": LEGACY_MAGIC, "protocol": 1001, "sys_info": SYS_INFO, "obj": obj}
    header |= {"keys": list(storages)} | parts
    with open(path, "wb") as file:
        for name in ("magic", "protocol", "sys_info", "obj", "keys"):
            file.write(_pickle(header[name]))
        for flat in storages.values():
            file.write(struct.pack("<q", flat.size) + flat.tobytes())


def _write(path, obj, storages, fmt):
    (_write_zip if fmt == "zip" else _write_legacy)(path, obj, storages)


ARRAYS = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
    "bn.running_var": np.linspace(0.5, 2, 2),  # float64
    "bn.num_batches_tracked": np.array(7, np.int64),
    "half": np.array([[1.5, -2], [0.25, 8]], np.float16),
}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_hand_written_checkpoints_load(tmp_path, fmt):
    path = tmp_path / "model.pth"
    obj, storages = _state(ARRAYS, legacy=fmt == "legacy")
    _write(path, {"state_dict": obj, "epoch": 3}, storages, fmt)
    loaded = load_state_dict(path)
    assert list(loaded) == list(ARRAYS)
    for name, array in ARRAYS.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_reads_the_hand_written_checkpoints(tmp_path, fmt):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
    path = tmp_path / "model.pth"
    obj, storages = _state(ARRAYS, legacy=fmt == "legacy")
    _write(path, obj, storages, fmt)
    loaded = torch.load(path, weights_only=True)
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(loaded[name].numpy(), array)


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_files_in_both_formats(tmp_path, zip_format):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
    tensors = {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "bn.running_var": torch.rand(4, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(7),
        "half": torch.randn(2, 5).half(),
        "bf16": torch.randn(3).bfloat16(),
        "strided": torch.randn(5, 6)[:, ::2],  # a view: offset and strides matter
        "parameter": torch.nn.Parameter(torch.randn(3)),
    }
    path = tmp_path / "model.pth.tar"
    wrapped = {"state_dict": {f"module.{k}": v for k, v in tensors.items()}, "epoch": 3}
    torch.save(wrapped, path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    loaded = load_state_dict(path)
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        expected = value.detach().float() if key == "bf16" else value.detach()
        np.testing.assert_array_equal(loaded[key], expected.numpy())


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"hello")
    with pytest.raises(DissectError, match=r"junk\.pth: not a"):
        load_state_dict(path)


CODE_POSITIONS = [
    ("zip", "obj"),
    ("zip", "tensor"),
    ("zip", "pid"),
    ("legacy", "magic"),
    ("legacy", "protocol"),
    ("legacy", "sys_info"),
    ("legacy", "obj"),
    ("legacy", "tensor"),
    ("legacy", "pid"),
    ("legacy", "keys"),
]


@pytest.mark.parametrize(("fmt", "position"), CODE_POSITIONS)
def test_code_in_any_pickle_is_refused(tmp_path, fmt, position):
    marker = tmp_path / "pwned"
    payload = Call(Global("builtins", "open"), (str(marker), "w"))
    legacy = fmt == "legacy"
    obj, storages = _state({"w": np.ones(3, np.float32)}, legacy=legacy)
    if position == "obj":
        obj["extra"] = payload
    elif position == "tensor":
        obj["w"] = payload
    elif position == "pid":
        pid = ("storage", payload, "0", "cpu", 3) + (None,) * legacy
        obj["w"] = Call(Global("torch._utils", "_rebuild_tensor"), (Persistent(pid), 0, (3,), (1,)))
    path = tmp_path / "evil.pth"
    if position in ("magic", "protocol", "sys_info", "keys"):
        _write_legacy(path, obj, storages, **{position: payload})
    else:
        _write(path, obj, storages, fmt)
    with pytest.raises(DissectError, match=r"evil\.pth: refusing to load builtins\.open"):
        load_state_dict(path)
    assert not marker.exists()


def test_pickled_python_class_is_named(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(DissectError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_state_dict(path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_tensor_state_cannot_be_set_after_it_is_built(tmp_path, fmt):
    obj, storages = _state({"w": np.ones(4, np.float32)}, legacy=fmt == "legacy")
    obj["w"] = Build(obj["w"], (None, {"storage": "0"}))  # BUILD's slot state: setattr
    path = tmp_path / "model.pth"
    _write(path, obj, storages, fmt)
    with pytest.raises(DissectError, match=r"model\.pth: .*refusing to set the state"):
        load_state_dict(path)


BAD_VIEWS = {  # (size, stride, offset) over a storage of 10 elements
    "too long": ((1_000_000,), (1,), 0),
    "stride too large": ((2, 5), (1000, 1), 0),
    "offset too large": ((5,), (1,), 6),
    "negative offset": ((5,), (1,), -3),
    "negative stride": ((5,), (-1,), 9),
    "negative size": ((-2, 5), (5, 1), 0),
    "mismatched lengths": ((2, 5), (5,), 0),
}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("view", list(BAD_VIEWS))
def test_tensor_outside_its_storage_is_refused(tmp_path, fmt, view):
    size, stride, offset = BAD_VIEWS[view]
    legacy = fmt == "legacy"
    obj = {"layer.weight": _tensor("0", np.float32, 10, size, stride, offset, legacy)}
    path = tmp_path / "model.pth"
    _write(path, obj, {"0": np.arange(10, dtype=np.float32)}, fmt)
    with pytest.raises(DissectError, match=r"model\.pth: tensor layer\.weight "):
        load_state_dict(path)


def test_a_view_inside_its_storage_loads(tmp_path):
    obj = {"w": _tensor("0", np.float32, 10, (2, 3), (4, 2), 1)}  # the last element is 9
    path = tmp_path / "model.pth"
    _write_zip(path, obj, {"0": np.arange(10, dtype=np.float32)})
    np.testing.assert_array_equal(load_state_dict(path)["w"], [[1, 3, 5], [5, 7, 9]])


def test_cli_reports_a_bad_tensor_in_one_line(tmp_path, capsys):
    obj = {"conv1.weight": _tensor("0", np.float32, 10, (16, 3, 3, 3))}
    path = tmp_path / "model.pth"
    _write_zip(path, obj, {"0": np.zeros(10, np.float32)})
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((1, 32, 32, 3), np.uint8))
    out = tmp_path / "out.npy"
    argv = ["features", "--model", "zoo:resnet20-cifar10", "--weights", str(path)]
    assert main([*argv, "--layer", "layer3", "--images", str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "model.pth: tensor conv1.weight " in err
    assert not out.exists()


def test_missing_zip_storage_is_named(tmp_path):
    obj, _ = _state({"w": np.ones(3, np.float32)}, legacy=False)
    path = tmp_path / "model.pth"
    _write_zip(path, obj, {})
    with pytest.raises(DissectError, match=r"model\.pth: storage entry archive/data/0 is missing"):
        load_state_dict(path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("numel", [2, 4])
def test_storage_of_the_wrong_length_is_refused(tmp_path, fmt, numel):
    obj = {"w": _tensor("0", np.float32, 3, (3,), legacy=fmt == "legacy")}
    path = tmp_path / "model.pth"
    _write(path, obj, {"0": np.ones(numel, np.float32)}, fmt)
    unit = "bytes" if fmt == "zip" else "elements"
    count = 4 * numel if fmt == "zip" else numel
    with pytest.raises(DissectError, match=rf"model\.pth: storage '0' holds {count} {unit}"):
        load_state_dict(path)


def test_truncated_legacy_storage_is_refused(tmp_path):
    obj, storages = _state({"w": np.ones(300, np.float32)}, legacy=True)
    path = tmp_path / "model.pth"
    _write_legacy(path, obj, storages)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DissectError, match=r"model\.pth: storage '0' holds 1100 bytes, 1200"):
        load_state_dict(path)


def test_legacy_keys_must_name_the_storages(tmp_path):
    obj, storages = _state({"w": np.ones(3, np.float32)}, legacy=True)
    path = tmp_path / "model.pth"
    _write_legacy(path, obj, storages, keys=["other"])
    with pytest.raises(DissectError, match=r"model\.pth: the storage keys do not match"):
        load_state_dict(path)


def test_legacy_storage_without_data_is_named(tmp_path):
    obj, storages = _state({"w": np.ones(3, np.float32)}, legacy=True)
    path = tmp_path / "model.pth"
    _write_legacy(path, obj, storages, keys=[])
    with pytest.raises(DissectError, match=r"model\.pth: tensor w: storage '0' has no data"):
        load_state_dict(path)


@pytest.mark.parametrize("part", ["sys_info", "size"])
def test_malformed_legacy_parts_are_named(tmp_path, part):
    obj = {"w": _tensor("0", np.float32, 3, (3,), legacy=True)}
    parts = {"sys_info": ["not", "a", "dict"]} if part == "sys_info" else {}
    if part == "size":  # 65 dimensions, more than NumPy has
        obj = {"w": _tensor("0", np.float32, 3, (1,) * 65, legacy=True)}
    path = tmp_path / "model.pth"
    _write_legacy(path, obj, {"0": np.ones(3, np.float32)}, **parts)
    with pytest.raises(DissectError, match=r"model\.pth: not a"):
        load_state_dict(path)


def test_legacy_storage_views_are_refused(tmp_path):
    pid = ("storage", Global("torch", "FloatStorage"), "0", "cpu", 3, ("1", 0, 3))
    obj = {"w": Call(Global("torch._utils", "_rebuild_tensor"), (Persistent(pid), 0, (3,), (1,)))}
    path = tmp_path / "model.pth"
    _write_legacy(path, obj, {"0": np.ones(3, np.float32)})
    with pytest.raises(DissectError, match=r"model\.pth: storage views"):
        load_state_dict(path)


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    numel = 32 << 20  # 128 MiB of float32 zeros, deflated to ~130 KB
    obj = {"conv1.weight": _tensor("0", np.float32, numel, (numel,))}
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", _pickle(obj))
        with archive.open("archive/data/0", "w") as entry:
            for _ in range(128):
                entry.write(bytes(1 << 20))
    assert path.stat().st_size < 1 << 20
    declared = len(_pickle(obj)) + 4 * numel
    with pytest.raises(DissectError, match=rf"bomb\.pth: the checkpoint declares {declared} "):
        zoo.build("resnet20-cifar10", path)  # 271,098 parameters: about 73 MB allowed


def test_pickle_bomb_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", bytes(80 << 20))
    with pytest.raises(DissectError, match=rf"bomb\.pth: the checkpoint declares {80 << 20} "):
        load_state_dict(path, parameter_count=1000)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_declared_storage_beyond_the_budget_is_refused(tmp_path, fmt):
    obj = {"w": _tensor("0", np.float64, 10**12, (3,), legacy=fmt == "legacy")}
    path = tmp_path / "model.pth"
    _write(path, obj, {"0": np.ones(3)}, fmt)
    with pytest.raises(DissectError, match=r"model\.pth: the checkpoint declares 8\d{12} bytes"):
        load_state_dict(path, parameter_count=1000)


def test_broadcast_tensor_beyond_the_budget_is_refused(tmp_path):
    obj = {"w": _tensor("0", np.float32, 1, (10**6, 10**6), (0, 0))}  # 4 TB from 4 bytes
    path = tmp_path / "model.pth"
    _write_zip(path, obj, {"0": np.ones(1, np.float32)})
    with pytest.raises(DissectError, match=r"model\.pth: the checkpoint declares 4000000000000 "):
        load_state_dict(path)


@pytest.fixture(scope="module")
def resnet20_state():
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} is absent (it lives in ../shared, beside CI's checkout)")
    return load_state_dict(WEIGHTS)


@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_integer_weights_are_refused(tmp_path, resnet20_state, dtype):
    arrays = dict(resnet20_state)
    arrays["conv1.weight"] = (arrays["conv1.weight"] * 1000).astype(dtype)
    obj, storages = _state(arrays, legacy=False)
    path = tmp_path / "model.pth"
    _write_zip(path, obj, storages)
    name = np.dtype(dtype).name
    with pytest.raises(DissectError, match=rf"model\.pth: .*conv1\.weight: dtype {name} cannot"):
        zoo.build("resnet20-cifar10", path)


def test_integer_batch_counts_still_load(tmp_path, resnet20_state):
    arrays = dict(resnet20_state)
    counts = [
        k.replace("running_mean", "num_batches_tracked") for k in arrays if "running_mean" in k
    ]
    assert len(counts) == 19  # conv1's BatchNorm and two per each of the 9 blocks
    arrays |= {k: np.array(390, np.int64) for k in counts}
    obj, storages = _state(arrays, legacy=False)
    path = tmp_path / "model.pth"
    _write_zip(path, obj, storages)
    model = zoo.build("resnet20-cifar10", path)
    np.testing.assert_array_equal(model.conv1.bn.mean.get_value(), arrays["bn1.running_mean"])
