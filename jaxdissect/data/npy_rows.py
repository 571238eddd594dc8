"""Reading rows of a large .npy file with plain file reads.

A memory map would do, but the pages it touches stay in the process's resident memory, so a
dissection of a features file larger than memory would look (and, under cgroup limits, be
treated) as if it held the file. Reading each batch's rows explicitly keeps the process's
memory to one batch; the operating system's page cache still speeds up the second pass.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np

# A header longer than this is refused before it is read: its length field is untrusted
# (NumPy itself refuses headers over 10 000 bytes unless told otherwise).
MAX_HEADER_BYTES = 2**16
MAGIC = b"\x93NUMPY"


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy file open at its start in ``f``; the file
    left at the first byte of the data. Any malformed header raises ValueError: the length
    field is bounded before anything is allocated, and the dictionary is parsed as a
    literal (never evaluated, never tokenized as Python 2)."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != MAGIC:
        raise ValueError("no .npy magic string at its start")
    major, minor = magic[6], magic[7]
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unknown .npy format version {major}.{minor}")
    size_bytes = 2 if major == 1 else 4
    raw = f.read(size_bytes)
    if len(raw) < size_bytes:
        raise ValueError("truncated header length")
    length = int.from_bytes(raw, "little")
    if length > MAX_HEADER_BYTES:
        raise ValueError(
            f"header length field says {length} bytes, more than the {MAX_HEADER_BYTES} allowed"
        )
    header = f.read(length)
    if len(header) < length:
        raise ValueError(f"header truncated: {len(header)} of {length} bytes")
    try:
        text = header.decode("utf-8" if major == 3 else "latin1")
        fields = ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, UnicodeError):
        raise ValueError("header is not a Python dictionary literal") from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise ValueError("header must hold exactly the keys descr, fortran_order and shape")
    shape, fortran_order = fields["shape"], fields["fortran_order"]
    sizes = isinstance(shape, tuple) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    )
    if not sizes:
        raise ValueError(f"header's shape {shape!r} is not a tuple of sizes")
    if not isinstance(fortran_order, bool):
        raise ValueError(f"header's fortran_order {fortran_order!r} is not a bool")
    try:
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
        raise ValueError(f"header's descr {fields['descr']!r} is not a dtype ({error})") from None
    return shape, fortran_order, dtype


class NpyRows:
    """Row slices of a C-ordered .npy array: ``rows[start:stop]`` reads just those rows."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            shape, fortran_order, dtype = read_npy_header(f)
            self.offset = f.tell()
        if fortran_order:
            raise ValueError("Fortran-ordered arrays are not supported; save with C order")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        if self.ndim == 0:  # a scalar has no rows (shape[0] was an IndexError)
            raise ValueError("a 0-dimensional array (a single number) has no rows")
        # Python integers: a forged header's sizes cannot overflow.
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        expected = self.offset + self.shape[0] * self.row_bytes
        if self.path.stat().st_size < expected:
            raise ValueError(
                f"truncated: the header promises {expected} bytes, the file has "
                f"{self.path.stat().st_size}"
            )

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("only contiguous row slices are read")
        count = max(stop - start, 0)
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.row_bytes)
            data = np.fromfile(f, self.dtype, count * self.row_bytes // self.dtype.itemsize)
        return data.reshape(count, *self.shape[1:])
