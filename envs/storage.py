"""Atomic, streaming writes of the on-disk data formats: .npy arrays whose length is known only at the end, and
small JSON sidecars.

`NpyAppender` streams chunks into a temporary file behind a fixed-size .npy header, writes the header once the
final shape is known and moves the file into place with os.replace, so a reader (np.load, memmap) never sees a
half-written array and a recording never has to fit in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CACHE_DIR = ".cache/worldmodel"
"""Where generated clips, gym recordings and decoded videos are cached unless a run says otherwise (relative to the
working directory)."""

_HEADER_BYTES = 128
"""Magic + version + length + dict, space padded. A multiple of 64 (numpy's alignment) and big enough for any shape
with up to ~12-digit dimensions."""


def temp_path(target: Path) -> Path:
    """A fresh temporary file next to `target` (same filesystem, so os.replace is an atomic rename)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically (temporary file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    """np.save, atomically."""
    with NpyAppender(path, array.dtype, array.shape[1:]) as out:
        out.append(array)
    return Path(path)


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    body_len = _HEADER_BYTES - 10  # magic (6) + version (2) + little-endian uint16 length (2)
    if len(text) + 1 > body_len:
        raise ValueError(f"shape {shape} is too large for a {_HEADER_BYTES}-byte .npy header")
    body = text.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body.encode("latin1")


class NpyAppender:
    """Append (k, *item_shape) chunks; `close()` publishes `path` as a regular .npy of shape (total, *item_shape).

    Use as a context manager: on an exception the temporary file is removed and `path` is left untouched.
    """

    def __init__(self, path: str | Path, dtype: np.dtype | type, item_shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.item_shape = tuple(int(n) for n in item_shape)
        self.count = 0
        self._tmp = temp_path(self.path)
        self._file = open(self._tmp, "wb")
        self._file.write(b"\0" * _HEADER_BYTES)

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk)
        if chunk.shape[1:] != self.item_shape:
            raise ValueError(f"{self.path.name}: chunk of shape {chunk.shape} does not fit items of {self.item_shape}")
        self._file.write(np.ascontiguousarray(chunk, dtype=self.dtype).tobytes())
        self.count += int(chunk.shape[0])

    def close(self) -> Path:
        self._file.seek(0)
        self._file.write(_npy_header(self.dtype, (self.count, *self.item_shape)))
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "NpyAppender":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
