"""Read TensorFlow checkpoints (tensor bundle V2, as in OpenAI's GPT-2 release) with numpy only.

A checkpoint with prefix `P` is `P.index` plus data shards `P.data-00000-of-0000N`.

`P.index` is a LevelDB-format SSTable. It ends in a 48-byte footer: the BlockHandles (offset varint,
size varint) of the metaindex and index blocks, zero padding, and the little-endian 8-byte magic
0xdb4775248b80fb57. Each block is followed by a 5-byte trailer: a compression byte (TF writes 0,
uncompressed) and the masked CRC32C of the block plus that byte. A block is a run of prefix-compressed
entries (shared key bytes varint, non-shared varint, value length varint, key suffix, value), then a
restart array of uint32 offsets and its uint32 count; reading the entries in order needs no restarts.
The index block maps a separator key to the BlockHandle of each data block; the metaindex is unused.

In the data blocks, the key "" holds a BundleHeaderProto (num_shards=1, endianness=2, version=3) and
every other key is a tensor name whose value is a BundleEntryProto (dtype=1, shape=2, shard_id=3,
offset=4, size=5, crc32c=6, slices=7): the tensor's raw row-major bytes are `size` bytes at `offset`
in its shard. Both are protobufs, decoded here by a minimal wire-format reader.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxgpt.errors import UserError

_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_TRAILER_SIZE = 5  # compression type byte + masked CRC32C
_COMPRESSION = {1: "snappy", 2: "zlib", 3: "lz4", 4: "zstd"}
# tensorflow/core/framework/types.proto DataType numbers of the fixed-size types.
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 8: np.complex64,
           9: np.int64, 10: np.bool_, 14: jnp.bfloat16, 17: np.uint16, 18: np.complex128,
           19: np.float16, 22: np.uint32, 23: np.uint64}
_REDOWNLOAD = "re-download the checkpoint"


class _Entry(NamedTuple):
    dtype: np.dtype
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int


# --- CRC32C (Castagnoli), only for the small index file ---------------------------------------------
def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # reversed Castagnoli polynomial
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    # LevelDB stores CRCs rotated right by 15 bits plus a constant, so CRCs of CRCs stay meaningful.
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --- protobuf wire format -------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """An unsigned varint at `pos` (7 bits a byte, least significant first) and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _proto(buf: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> values. Varint/fixed fields decode to ints, length-delimited ones to bytes."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):  # fixed64 / fixed32, little-endian
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if number == 0 or pos > len(buf):
            raise ValueError("malformed protobuf")
        fields.setdefault(number, []).append(value)
    return fields


def _field(fields: dict, number: int, kind: type, default: int | bytes = 0) -> int | bytes:
    """The last value of a scalar field (protobuf's rule), checking it has the expected wire kind."""
    return _repeated(fields, number, kind, [default])[-1]


def _repeated(fields: dict, number: int, kind: type, default: list | None = None) -> list:
    """Every value of a field, checking they all have the expected wire kind."""
    values = fields.get(number, default or [])
    if not all(isinstance(value, kind) for value in values):
        raise ValueError(f"protobuf field {number} has the wrong wire type")
    return values


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value  # varints carry int64 as two's complement


# --- SSTable ---------------------------------------------------------------------------------------------
def _block(data: bytes, handle: bytes) -> bytes:
    """The contents of the block that a BlockHandle points to, after checking its trailer."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    end = offset + size
    if end + _TRAILER_SIZE > len(data) - _FOOTER_SIZE:
        raise ValueError("block points past the end of the file")
    (stored_crc,) = struct.unpack_from("<I", data, end + 1)
    if _masked_crc32c(data[offset:end + 1]) != stored_crc:  # covers the contents and the type byte
        raise ValueError(f"checksum mismatch in the block at byte {offset}")
    if data[end] != 0:
        kind = _COMPRESSION.get(data[end], f"type {data[end]}")
        raise UserError(f"the block at byte {offset} is {kind}-compressed, which jaxgpt cannot read; "
                        "re-save the checkpoint with TensorFlow's default (uncompressed) settings")
    return data[offset:end]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of a block, undoing the prefix compression of keys."""
    if len(block) < 4:
        raise ValueError("block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts  # the entries stop where the restart array starts
    if end < 0:
        raise ValueError("bad restart count")
    entries, key, pos = [], b"", 0
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > end:
            raise ValueError("malformed block entry")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos:pos + value_len]))
        pos += value_len
    return entries


# --- tensor bundle ---------------------------------------------------------------------------------------
def _parse_entry(name: str, value: bytes) -> _Entry:
    """A BundleEntryProto, checked for a supported dtype and a size that matches the shape."""
    fields = _proto(value)
    if 7 in fields:
        raise UserError(f"tensor {name!r} is a partitioned variable (saved in slices), which jaxgpt cannot "
                        "read; re-save it unpartitioned")
    dtype_number = _field(fields, 1, int)
    if dtype_number not in _DTYPES:
        kind = "DT_STRING" if dtype_number == 7 else f"enum value {dtype_number}"
        raise UserError(f"tensor {name!r} has TensorFlow dtype {kind}, which jaxgpt cannot read; "
                        "only numeric tensors (as in OpenAI's GPT-2 checkpoints) are supported")
    shape_fields = _proto(_field(fields, 2, bytes, b""))
    if _field(shape_fields, 3, int):
        raise ValueError(f"tensor {name!r} has an unknown rank")
    shape = tuple(_int64(_field(_proto(dim), 1, int)) for dim in _repeated(shape_fields, 2, bytes))
    entry = _Entry(np.dtype(_DTYPES[dtype_number]), shape, *(_int64(_field(fields, n, int)) for n in (3, 4, 5)))
    if min(shape, default=0) < 0 or entry.offset < 0 or entry.size != math.prod(shape) * entry.dtype.itemsize:
        raise ValueError(f"tensor {name!r} has {entry.size} bytes, which does not fit shape {shape}")
    return entry


def _read_index(prefix: Path) -> tuple[int, dict[str, _Entry]]:
    """The number of data shards and every tensor's entry, in the index's (sorted) order."""
    path = Path(f"{prefix}.index")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} not found; pass the checkpoint prefix, the path before '.index' "
                        "(for example models/124M/model.ckpt)") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if len(data) < _FOOTER_SIZE or int.from_bytes(data[-8:], "little") != _MAGIC:
        raise UserError(f"{path} is not a TensorFlow checkpoint index (bad magic, or truncated); {_REDOWNLOAD}")
    try:
        footer = data[-_FOOTER_SIZE:]
        _, pos = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle (offset, size)
        index_block = _block(data, footer[pos:])
        header, entries = None, {}
        for _, handle in _block_entries(index_block):
            for key, value in _block_entries(_block(data, handle)):
                if key == b"":
                    header = _proto(value)
                else:
                    name = key.decode(errors="backslashreplace")  # slices of partitioned variables are binary
                    entries[name] = _parse_entry(name, value)
        if header is None:
            raise ValueError("no bundle header")
        num_shards = _field(header, 1, int)
        if _field(header, 2, int) != 0:  # BundleHeaderProto.Endianness: LITTLE = 0, BIG = 1
            raise UserError("it was written on a big-endian machine, which jaxgpt cannot read; "
                            "re-save it on a little-endian (x86 or ARM) machine")
        if any(not 0 <= e.shard < num_shards for e in entries.values()):
            raise ValueError("a tensor's shard id is out of range")
    except UserError as e:  # raised above without the file name
        raise UserError(f"{path}: {e}") from None
    except (ValueError, IndexError, struct.error) as e:
        raise UserError(f"{path} is corrupt ({e}); {_REDOWNLOAD}") from None
    return num_shards, entries


def list_tf_checkpoint(prefix: str | Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Names -> (dtype, shape) of a TF checkpoint's tensors, read from its index alone."""
    _, entries = _read_index(Path(prefix))
    return {name: (e.dtype, e.shape) for name, e in entries.items()}


def read_tf_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Read every tensor of a TF checkpoint given its prefix (e.g. ".../model.ckpt")."""
    num_shards, entries = _read_index(Path(prefix))
    tensors = {}
    for shard in sorted({e.shard for e in entries.values()}):
        path = Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")
        mine = {name: e for name, e in entries.items() if e.shard == shard}
        try:
            with open(path, "rb") as f:
                needed, actual = max(e.offset + e.size for e in mine.values()), f.seek(0, 2)
                if actual < needed:
                    raise UserError(f"{path} is truncated ({actual} bytes, the index needs {needed}); {_REDOWNLOAD}")
                for name, e in mine.items():  # one tensor at a time: the data file can be many GB
                    buf = bytearray(e.size)  # writable, so the array is too
                    f.seek(e.offset)
                    if f.readinto(buf) != e.size:
                        raise UserError(f"{path} changed while being read; {_REDOWNLOAD}")
                    tensors[name] = np.frombuffer(buf, e.dtype).reshape(e.shape)
        except FileNotFoundError:
            raise UserError(f"{path} not found; it must sit next to {prefix}.index ({_REDOWNLOAD})") from None
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None
    return {name: tensors[name] for name in entries}
