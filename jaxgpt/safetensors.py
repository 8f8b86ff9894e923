"""Read and write the safetensors format with NumPy alone (no PyTorch, no extra package).

A safetensors file is: an unsigned 64-bit little-endian header length N, N bytes of JSON mapping each
tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional "__metadata__" dict of
strings), then the raw little-endian tensor bytes, offsets counted from the end of the header. Tensors
are read through a memory map, so a 6 GB file is not copied into memory until a tensor is used.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxgpt.errors import UserError

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(jnp.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100_000_000  # the reference implementation's limit


def _corrupt(path: Path, what: str) -> UserError:
    return UserError(f"{path} is not a valid safetensors file ({what}); download or export it again")


def read_header(path: str | Path) -> tuple[dict, dict[str, str], int]:
    """(tensor entries, metadata, byte offset of the data) of a safetensors file, validated."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, "shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise _corrupt(path, f"header length {n} exceeds the file size {size}")
            raw = f.read(n)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt(path, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = _DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
            ok = all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end))
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"entry {name!r} is malformed or has an unsupported dtype") from None
        if not ok or end - begin != math.prod(shape) * dtype.itemsize:
            raise _corrupt(path, f"tensor {name!r} has offsets {[begin, end]} that do not fit its shape {shape}")
        if end > data_size:
            raise _corrupt(path, f"tensor {name!r} ends at byte {end} but the data holds {data_size}: "
                                 "the file is truncated")
    return header, metadata, 8 + n


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a file (read-only memory-mapped arrays) and its metadata."""
    path = Path(path)
    header, metadata, start = read_header(path)
    if not header:
        return {}, metadata
    buf = np.asarray(np.memmap(path, dtype=np.uint8, mode="r"))  # a plain ndarray view of the map
    tensors = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        tensors[name] = buf[start + begin:start + end].view(_DTYPES[e["dtype"]]).reshape(tuple(e["shape"]))
    return tensors, metadata


def save(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (C-contiguous little-endian copies are made as needed) to a new file at `path`."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    arrays, offset = [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if a.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} has no safetensors name")
        a = np.require(a.astype(a.dtype.newbyteorder("<"), copy=False), requirements="C")  # keeps 0-d
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for a in arrays:
            f.write(a.tobytes())
