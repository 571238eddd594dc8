"""Reading rows of a large .npy file with plain file reads.

A memory map would do, but the pages it touches stay in the process's resident memory, so a
dissection of a features file larger than memory would look (and, under cgroup limits, be
treated) as if it held the file. Reading each batch's rows explicitly keeps the process's
memory to one batch; the operating system's page cache still speeds up the second pass.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


class NpyRows:
    """Row slices of a C-ordered .npy array: ``rows[start:stop]`` reads just those rows."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(f)
            self.offset = f.tell()
        if fortran_order:
            raise ValueError("Fortran-ordered arrays are not supported; save with C order")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
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
