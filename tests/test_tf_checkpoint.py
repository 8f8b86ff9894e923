"""The pure-numpy TensorFlow checkpoint reader, against fixtures that TensorFlow wrote (see fixtures/).

Beyond the committed fixtures, a small SSTable writer here builds indexes TensorFlow would only write
at hundreds of KB (several data blocks) or never (compressed blocks, bad entries), to test those paths.
"""

import os
import shutil
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.store import openai
from jaxgpt.errors import UserError
from jaxgpt.store.openai import list_tf_checkpoint, read_tf_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)


def _expected(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name / "weights.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    # np.savez keeps no bfloat16 dtype: those arrays come back as 2-byte voids.
    return {k: a.view(jnp.bfloat16) if a.dtype.kind == "V" else a for k, a in arrays.items()}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _copy(name: str, tmp_path: Path) -> Path:
    """A writable copy of a fixture; returns its checkpoint prefix."""
    shutil.copytree(FIXTURES / name, tmp_path / name)
    return tmp_path / name / "model.ckpt"


# --- a minimal SSTable / tensor bundle writer ------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _pb(number: int, value: int | bytes) -> bytes:
    """One protobuf field: a varint for an int, length-delimited for bytes."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _entry(dtype: int = 1, shape: tuple[int, ...] = (2,), offset: int = 0, size: int = 8) -> bytes:
    """A BundleEntryProto."""
    return _pb(1, dtype) + _pb(2, b"".join(_pb(2, _pb(1, d)) for d in shape)) + _pb(4, offset) + _pb(5, size)


def _write_index(path: Path, items: list[tuple[bytes, bytes]], per_block: int = 1000, restart_every: int = 16,
                 compression: int = 0) -> None:
    """An SSTable of the sorted (key, value) items, with `per_block` entries in each data block."""
    out = bytearray()

    def block(entries: list[tuple[bytes, bytes]], restart_every: int) -> bytes:
        body, restarts, prev = bytearray(), [], b""
        for i, (key, value) in enumerate(entries):
            shared = 0 if i % restart_every == 0 else len(os.path.commonprefix([prev, key]))
            if shared == 0:
                restarts.append(len(body))
            body += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
            prev = key
        restarts = restarts or [0]
        body += struct.pack(f"<{len(restarts) + 1}I", *restarts, len(restarts))
        trailer = bytes([compression])
        handle = _varint(len(out)) + _varint(len(body))
        out.extend(body + trailer + struct.pack("<I", openai._masked_crc32c(body + trailer)))
        return handle

    chunks = [items[i:i + per_block] for i in range(0, len(items), per_block)]
    index = [(chunk[-1][0], block(chunk, restart_every)) for chunk in chunks]
    handles = block([], 1) + block(index, 1)  # metaindex (empty), then index
    out += handles + bytes(40 - len(handles)) + MAGIC
    path.write_bytes(out)


def _write_checkpoint(prefix: Path, arrays: dict[str, np.ndarray], **index_options) -> None:
    """A float32 bundle of `arrays`, in one data shard."""
    data, items = bytearray(), [(b"", _pb(1, 1))]  # header: num_shards=1
    for name in sorted(arrays):
        items.append((name.encode(), _entry(1, arrays[name].shape, len(data), arrays[name].nbytes)))
        data += arrays[name].tobytes()
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)
    _write_index(Path(f"{prefix}.index"), items, **index_options)


# --- reading what TensorFlow wrote -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["openai_tf", "tf_dtypes"])
def test_reads_tensorflow_fixture_exactly(name):
    expected = _expected(name)
    prefix = FIXTURES / name / "model.ckpt"
    got = read_tf_checkpoint(prefix)
    assert list(got) == sorted(expected)  # the index keeps names sorted
    assert all(_same(got[k], expected[k]) for k in expected)
    assert list_tf_checkpoint(str(prefix)) == {k: (a.dtype, a.shape) for k, a in expected.items()}
    assert all(a.flags.writeable for a in got.values())


def test_dtype_fixture_covers_every_dtype():
    got = read_tf_checkpoint(FIXTURES / "tf_dtypes" / "model.ckpt")
    assert all(a.dtype.name == name.rsplit("_", 1)[1] for name, a in got.items())
    assert {a.dtype.name for a in got.values()} == {"float32", "float64", "float16", "bfloat16", "int32", "int64",
                                                    "int8", "uint8", "int16", "bool"}


def test_openai_layout():
    got = list_tf_checkpoint(FIXTURES / "openai_tf" / "model.ckpt")
    assert got["model/wte"] == (np.dtype(np.float32), (96, 32))
    assert got["model/h1/mlp/c_proj/w"] == (np.dtype(np.float32), (1, 128, 32))
    assert len(got) == 4 + 12 * 2


@pytest.mark.parametrize("per_block, restart_every", [(1, 1), (3, 2), (7, 16)])
def test_multi_block_index(tmp_path, per_block, restart_every):
    expected = _expected("openai_tf")
    _write_checkpoint(tmp_path / "model.ckpt", expected, per_block=per_block, restart_every=restart_every)
    got = read_tf_checkpoint(tmp_path / "model.ckpt")
    assert list(got) == sorted(expected) and all(_same(got[k], expected[k]) for k in expected)


# --- errors ----------------------------------------------------------------------------------------------
def test_missing_files(tmp_path):
    with pytest.raises(UserError, match=r"model\.ckpt\.index not found; pass the checkpoint prefix"):
        read_tf_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(UserError, match="not found"):
        read_tf_checkpoint(FIXTURES / "openai_tf")  # a directory, not a prefix
    prefix = _copy("openai_tf", tmp_path)
    Path(f"{prefix}.data-00000-of-00001").unlink()
    with pytest.raises(UserError, match=r"data-00000-of-00001 not found; .*re-download"):
        read_tf_checkpoint(prefix)
    assert len(list_tf_checkpoint(prefix)) == 28  # listing needs the index only


def test_truncated_data_file(tmp_path):
    prefix = _copy("openai_tf", tmp_path)
    data = Path(f"{prefix}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-1])
    with pytest.raises(UserError, match=r"data-00000-of-00001 is truncated \(116223 bytes, the index needs 116224\)"):
        read_tf_checkpoint(prefix)


@pytest.mark.parametrize("cut", [0, 40, -1, -48])
def test_truncated_index(tmp_path, cut):
    prefix = _copy("openai_tf", tmp_path)
    index = Path(f"{prefix}.index")
    index.write_bytes(index.read_bytes()[:cut])
    with pytest.raises(UserError, match=r"not a TensorFlow checkpoint index \(bad magic, or truncated\)"):
        read_tf_checkpoint(prefix)


def test_index_missing_its_start(tmp_path):
    prefix = _copy("openai_tf", tmp_path)
    index = Path(f"{prefix}.index")
    index.write_bytes(index.read_bytes()[100:])  # the footer's block offsets now point at the wrong bytes
    with pytest.raises(UserError, match=r"model\.ckpt\.index is corrupt \(.*\); re-download the checkpoint"):
        read_tf_checkpoint(prefix)


def test_flipped_byte_fails_the_block_checksum(tmp_path):
    prefix = _copy("openai_tf", tmp_path)
    index = Path(f"{prefix}.index")
    data = bytearray(index.read_bytes())
    data[30] ^= 0x01  # inside a tensor name in the data block
    index.write_bytes(data)
    with pytest.raises(UserError, match="checksum mismatch in the block at byte 0"):
        read_tf_checkpoint(prefix)


def test_every_single_byte_corruption_of_the_index(tmp_path):
    prefix = _copy("openai_tf", tmp_path)
    index = Path(f"{prefix}.index")
    original, expected = index.read_bytes(), _expected("openai_tf")
    rng = np.random.default_rng(0)
    reads = 0
    for pos in range(len(original)):
        data = bytearray(original)
        data[pos] ^= int(rng.integers(1, 256))
        index.write_bytes(data)
        try:
            got = read_tf_checkpoint(prefix)
        except UserError:
            continue
        # Only the (empty, unused) metaindex block and the footer's zero padding are not read.
        reads += 1
        assert list(got) == sorted(expected) and all(_same(got[k], expected[k]) for k in expected)
    assert reads < 13 + 40



class _MatchesAnyCrc:
    """Stands in for a computed CRC that equals whatever the file stores."""

    def __ne__(self, other: object) -> bool:
        return False


def test_random_corruption_without_checksums_raises_only_user_error(tmp_path, monkeypatch):
    # With the CRC check disabled, corrupt bytes reach the SSTable and protobuf decoders themselves.
    monkeypatch.setattr(openai, "_masked_crc32c", lambda data: _MatchesAnyCrc())
    prefix = _copy("tf_dtypes", tmp_path)
    index = Path(f"{prefix}.index")
    original = index.read_bytes()
    rng = np.random.default_rng(1)
    errors = 0
    for _ in range(3000):
        data = bytearray(original)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            data[pos] = int(rng.integers(0, 256))
        index.write_bytes(data)
        try:
            assert all(isinstance(a, np.ndarray) for a in read_tf_checkpoint(prefix).values())
        except UserError as e:
            assert "\n" not in str(e)
            errors += 1
    assert 0 < errors < 3000


def _item_error(tmp_path, items, match, **index_options):
    _write_index(tmp_path / "model.ckpt.index", items, **index_options)
    with pytest.raises(UserError, match=match):
        list_tf_checkpoint(tmp_path / "model.ckpt")


HEADER = (b"", _pb(1, 1))


@pytest.mark.parametrize("items, match", [
    ([HEADER, (b"s", _entry(dtype=7))], "tensor 's' has TensorFlow dtype DT_STRING"),
    ([HEADER, (b"x", _entry(dtype=99))], "dtype enum value 99"),
    ([HEADER, (b"x", _entry() + _pb(7, b""))], "'x' is a partitioned variable"),
    ([HEADER, (b"x", _entry(size=12))], r"'x' has 12 bytes, which does not fit shape \(2,\)"),
    ([(b"", _pb(1, 1) + _pb(2, 1)), (b"x", _entry())], "written on a big-endian machine"),
    ([(b"x", _entry())], "no bundle header"),
    ([(b"", _pb(1, 1)), (b"x", _entry() + _pb(3, 1))], "shard id is out of range"),
    ([HEADER, (b"x", _pb(1, b"\x01"))], "field 1 has the wrong wire type"),
    ([HEADER, (b"x", _entry()[:-1])], "truncated varint"),
])
def test_bad_entries(tmp_path, items, match):
    _item_error(tmp_path, items, rf"model\.ckpt\.index.*{match}")


def test_compressed_block(tmp_path):
    _item_error(tmp_path, [HEADER, (b"x", _entry())], "is snappy-compressed", compression=1)
