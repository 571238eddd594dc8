"""Reading PyTorch checkpoints without PyTorch: tensors only, never arbitrary code.

Both layouts ``torch.save`` has used are read: the zip archive (PyTorch >= 1.6: a
``data.pkl`` plus one raw file per storage) and the legacy pickle stream (magic number,
protocol, system info, the object, the storage keys, then each storage's bytes). Every
pickle in either layout goes through one restricted unpickler, which only builds dicts,
lists, tuples, numbers, strings and tensors; any other class is refused with a message
naming it, so nothing in the file runs. Sizes are checked before data is read or
decompressed: the bytes the file declares are bounded (by the model's parameter count when
it is known), each storage must hold exactly its declared bytes, and each tensor must lie
within its storage.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from jaxdissect.errors import DissectError, check_regular_file

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
# A checkpoint may hold the weights plus an optimizer's state, in float64: four copies.
BYTES_PER_PARAMETER = 32
SLACK_BYTES = 64 << 20  # pickles, buffers and small models' overhead
DEFAULT_MAX_BYTES = 16 << 30  # when the model is not known: far above any zoo checkpoint


class _Unpickled:
    """An object the unpickler makes; the file may not set its attributes afterwards (the
    BUILD opcode), so a tensor cannot be moved off its storage once built."""

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"refusing to set the state of a {type(self).__name__}")


class _Storage(_Unpickled):
    """A storage named in the pickle; its bytes arrive later (legacy) or from the zip."""

    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.itemsize = 2 if dtype is None else np.dtype(dtype).itemsize
        self.array: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def fill(self, raw: bytes, path: Path) -> None:
        if len(raw) != self.nbytes:
            raise DissectError(
                f"{path}: storage {self.key!r} holds {len(raw)} bytes, {self.nbytes} declared"
            )
        if self.dtype is None:  # bfloat16: the high half of a float32
            self.array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            self.array = np.frombuffer(raw, self.dtype)


class _LazyTensor(_Unpickled):
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def out_bytes(self) -> int:
        return math.prod(self.size) * (4 if self.storage.dtype is None else self.storage.itemsize)

    def check(self, path: Path, name: str) -> None:
        """Refuses a tensor that would read outside its storage (as_strided does not check)."""
        size, stride, offset = self.size, self.stride, self.offset
        if offset < 0 or min(size + stride, default=0) < 0 or len(size) != len(stride):
            raise DissectError(
                f"{path}: tensor {name} has offset {offset}, size {size}, stride {stride}: "
                "negative, or sizes and strides of different lengths"
            )
        extent = 0 if 0 in size else 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if offset + extent > self.storage.numel:
            raise DissectError(
                f"{path}: tensor {name} (offset {offset}, size {size}, stride {stride}) reaches "
                f"past the end of its storage of {self.storage.numel} elements"
            )

    def materialize(self, path: Path, name: str) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise DissectError(f"{path}: tensor {name}: storage {self.storage.key!r} has no data")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * data.itemsize for s in self.stride]
        )
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
        raise pickle.UnpicklingError("a tensor whose size or stride is not a tuple")
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(n, int) for n in (offset, *size, *stride)):
        raise pickle.UnpicklingError("a tensor with a non-integer offset, size or stride")
    if len(size) > 64:  # NumPy's limit
        raise pickle.UnpicklingError(f"a tensor of {len(size)} dimensions")
    return _LazyTensor(storage, offset, size, stride)


class _DTypeName(_Unpickled):
    def __init__(self, name: str):
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    """The one unpickler every pickle in a checkpoint goes through."""

    def __init__(self, file, path: Path, storages: dict[str, _Storage]):
        super().__init__(file)
        self.path = path
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda tensor, *_: tensor
        if module == "torch" and (name in STORAGE_DTYPES or name == "UntypedStorage"):
            return name
        if module == "torch" and name in UNTYPED_DTYPES:
            return _DTypeName(name)
        raise DissectError(
            f"{self.path}: refusing to load {module}.{name}; only tensors and plain containers "
            "are read from PyTorch files (no code is run)"
        )

    def persistent_load(self, pid):
        # ("storage", type, key, location, numel), plus view metadata in legacy files
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise DissectError(f"{self.path}: unexpected persistent id {pid!r:.200}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if isinstance(storage_type, _DTypeName):
            dtype = UNTYPED_DTYPES[storage_type.name]
        elif isinstance(storage_type, str) and storage_type in STORAGE_DTYPES:
            dtype = STORAGE_DTYPES[storage_type]
        else:
            raise DissectError(f"{self.path}: unsupported storage type {storage_type!r:.200}")
        if not (isinstance(key, (str, int)) and isinstance(numel, int) and numel >= 0):
            raise DissectError(f"{self.path}: storage with key {key!r} and {numel!r} elements")
        if len(pid) == 6 and pid[5] is not None:
            raise DissectError(f"{self.path}: storage views (PyTorch < 0.4) are not supported")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, dtype, numel)
        return self.storages[key]


def _unpickle(stream, path: Path, storages: dict[str, _Storage]) -> Any:
    """One pickle from ``stream``, through the restricted unpickler."""
    try:
        return _RestrictedUnpickler(stream, path, storages).load()
    except DissectError:
        raise
    except Exception as error:  # a malformed pickle can fail in many ways; all are bad input
        raise DissectError(f"{path}: not a readable PyTorch checkpoint ({error!r:.200})") from None


def _check_budget(path: Path, declared: int, max_bytes: int) -> None:
    if declared > max_bytes:
        raise DissectError(
            f"{path}: the checkpoint declares {declared} bytes, more than the {max_bytes} "
            "allowed for this model"
        )


def _load_zip(path: Path, max_bytes: int) -> Any:
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in entries if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise DissectError(f"{path}: a zip file without data.pkl is not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        pickle_size = entries[pickles[0]].file_size
        _check_budget(path, pickle_size, max_bytes)
        storages: dict[str, _Storage] = {}
        obj = _unpickle(io.BytesIO(archive.read(pickles[0])), path, storages)
        _check_budget(path, pickle_size + sum(s.nbytes for s in storages.values()), max_bytes)
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            if name not in entries:
                raise DissectError(f"{path}: storage entry {name} is missing")
            if entries[name].file_size != storage.nbytes:  # before inflating
                raise DissectError(
                    f"{path}: storage {key!r} holds {entries[name].file_size} bytes, "
                    f"{storage.nbytes} declared"
                )
            storage.fill(archive.read(name), path)
    return obj


def _load_legacy(path: Path, max_bytes: int) -> Any:
    _check_budget(path, path.stat().st_size, max_bytes)
    stream = io.BytesIO(path.read_bytes())
    storages: dict[str, _Storage] = {}
    if _unpickle(stream, path, storages) != LEGACY_MAGIC:
        raise DissectError(f"{path}: not a PyTorch checkpoint (no torch.save magic number)")
    _unpickle(stream, path, storages)  # protocol version
    sys_info = _unpickle(stream, path, storages)
    if not isinstance(sys_info, dict):
        raise DissectError(f"{path}: not a PyTorch checkpoint (no system information)")
    if not sys_info.get("little_endian", True):
        raise DissectError(f"{path}: big-endian checkpoints are not supported")
    obj = _unpickle(stream, path, storages)
    keys = _unpickle(stream, path, storages)
    if not isinstance(keys, list) or not all(str(k) in storages for k in keys):
        raise DissectError(f"{path}: the storage keys do not match the tensors")
    _check_budget(path, sum(s.nbytes for s in storages.values()), max_bytes)
    for key in keys:
        storage = storages[str(key)]
        header = stream.read(8)
        if len(header) < 8:
            raise DissectError(f"{path}: storage {storage.key!r} is missing (file truncated)")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise DissectError(
                f"{path}: storage {storage.key!r} holds {numel} elements, {storage.numel} declared"
            )
        storage.fill(stream.read(numel * storage.itemsize), path)
    return obj


def load_state_dict(
    path: str | Path, *, parameter_count: int | None = None
) -> dict[str, np.ndarray]:
    """The tensors of a ``.pth`` / ``.pth.tar`` / ``.th`` file, by name.

    Accepts a bare state dict or ``{"state_dict": ...}`` (``model`` too), and strips the
    ``module.`` prefix that DataParallel adds.

    Args:
      path: the checkpoint.
      parameter_count: the number of parameters of the model the weights are for; the file
        may then declare at most ``BYTES_PER_PARAMETER`` bytes per parameter plus
        ``SLACK_BYTES``, checked before anything is decompressed (otherwise
        ``DEFAULT_MAX_BYTES``).

    Raises:
      DissectError: for missing files, other formats, any non-tensor class, sizes beyond
        the bound, and storages or tensors whose sizes do not agree.
    """
    path = Path(path)
    check_regular_file(path, "weights file")
    max_bytes = (
        DEFAULT_MAX_BYTES
        if parameter_count is None
        else BYTES_PER_PARAMETER * parameter_count + SLACK_BYTES
    )
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path, max_bytes)
        else:
            obj = _load_legacy(path, max_bytes)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise DissectError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, _LazyTensor) for k, v in obj.items()
    ):
        raise DissectError(f"{path}: expected a state dict of tensors")
    for name, tensor in obj.items():
        tensor.check(path, name)
    _check_budget(path, sum(tensor.out_bytes() for tensor in obj.values()), max_bytes)
    stripped = {}
    for name in obj:
        plain = name.removeprefix("module.")
        if plain in stripped:
            raise DissectError(
                f"{path}: holds both {stripped[plain]!r} and {name!r}: which one is meant?"
            )
        stripped[plain] = name
    return {plain: obj[name].materialize(path, name) for plain, name in stripped.items()}
