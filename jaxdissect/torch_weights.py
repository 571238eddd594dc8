"""Reading PyTorch checkpoints without PyTorch: tensors only, never arbitrary code.

Both layouts ``torch.save`` has used are read: the zip archive (PyTorch >= 1.6: a
``data.pkl`` plus one raw file per storage) and the legacy pickle stream (magic number,
protocol, system info, the object, the storage keys, then each storage's bytes). The
unpickler only builds dicts, lists, tuples, numbers, strings and tensors; any other class
in the file is refused with a message naming it.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxdissect.errors import DissectError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "BFloat16Storage": None,  # no NumPy bfloat16: read as uint16 and widened below
}
UNTYPED_DTYPES = {  # torch dtypes as pickled with UntypedStorage (zip files)
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


class _Storage:
    """A storage named in the pickle; its bytes arrive later (legacy) or from the zip."""

    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array: np.ndarray | None = None


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = (
            storage,
            offset,
            tuple(size),
            tuple(stride),
        )

    def materialize(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise DissectError(f"storage {self.storage.key!r} has no data in the file")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride]
        )
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return _LazyTensor(storage, offset, size, stride)


class _DTypeName:
    def __init__(self, name: str):
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, storages: dict[str, _Storage]):
        super().__init__(file)
        self.path = path
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in (
            "_rebuild_tensor",
            "_rebuild_tensor_v2",
            "_rebuild_parameter",
        ):
            if name == "_rebuild_parameter":
                return lambda tensor, *_: tensor
            return _rebuild_tensor
        if module == "torch" and (name in STORAGE_DTYPES or name == "UntypedStorage"):
            return name
        if module == "torch" and name in UNTYPED_DTYPES:
            return _DTypeName(name)
        raise DissectError(
            f"{self.path}: refusing to load {module}.{name}; only tensors and plain containers "
            "are read from PyTorch files (no code is run)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise DissectError(f"{self.path}: unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if isinstance(storage_type, _DTypeName):
            dtype = UNTYPED_DTYPES[storage_type.name]
        elif storage_type in STORAGE_DTYPES:
            dtype = STORAGE_DTYPES[storage_type]
        else:
            raise DissectError(f"{self.path}: unsupported storage type {storage_type!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(key, dtype, numel)
        return self.storages[key]


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _as_array(raw: bytes, dtype) -> np.ndarray:
    if dtype is None:  # bfloat16: the high half of a float32
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype)


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise DissectError(f"{path}: a zip file without data.pkl is not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
        for key, storage in storages.items():
            storage.array = _as_array(archive.read(f"{prefix}data/{key}"), storage.dtype)
    return _materialize(obj)


def _load_legacy(path: Path) -> Any:
    data = path.read_bytes()
    stream = io.BytesIO(data)
    try:
        magic = pickle.Unpickler(stream).load()
        if magic != LEGACY_MAGIC:
            raise DissectError(f"{path}: not a PyTorch checkpoint (no torch.save magic number)")
        pickle.Unpickler(stream).load()  # protocol version
        sys_info = pickle.Unpickler(stream).load()
        if not sys_info.get("little_endian", True):
            raise DissectError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(stream, path, storages).load()
        keys = pickle.Unpickler(stream).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
        raise DissectError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    for key in keys:
        storage = storages[str(key)]
        (numel,) = struct.unpack("<q", stream.read(8))
        itemsize = 2 if storage.dtype is None else np.dtype(storage.dtype).itemsize
        storage.array = _as_array(stream.read(numel * itemsize), storage.dtype)
    return _materialize(obj)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.pth`` / ``.pth.tar`` / ``.th`` file, by name.

    Accepts a bare state dict or ``{"state_dict": ...}`` (``model`` too), and strips the
    ``module.`` prefix that DataParallel adds.

    Raises:
      DissectError: for missing files, other formats, and any non-tensor class.
    """
    path = Path(path)
    if not path.is_file():
        raise DissectError(f"{path}: weights file not found")
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise DissectError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}
