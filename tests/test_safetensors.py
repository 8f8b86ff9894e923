"""Safetensors files through the `safetensors` package: every dtype jaxgpt meets round-trips, and a damaged
file is one line naming it."""

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy as reference

from jaxgpt.store.convert import read_safetensors, write_safetensors
from jaxgpt.errors import UserError


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "b.bias": rng.standard_normal(7).astype(np.float16),
        "c": rng.standard_normal((2, 2, 2)).astype(ml_dtypes.bfloat16),
        "d": np.arange(6, dtype=np.int64).reshape(2, 3),
        "e": np.array(3.5, dtype=np.float64),  # a scalar
        "f": np.zeros((0, 4), np.float32),  # an empty tensor
        "g": np.asfortranarray(rng.standard_normal((4, 3)).astype(np.float32)),  # not C-contiguous
    }


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_written_files_read_back_and_by_the_package(tmp_path):
    tensors = _tensors()
    write_safetensors(tmp_path / "x.safetensors", tensors, {"format": "pt"})
    ours, theirs = read_safetensors(tmp_path / "x.safetensors"), reference.load_file(tmp_path / "x.safetensors")
    assert set(ours) == set(theirs) == set(tensors)
    for name, t in tensors.items():
        assert _same(ours[name], t) and _same(theirs[name], t), name


@pytest.mark.parametrize("header", [
    b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}',  # offsets too short for the shape
    b'{"x": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}',  # unknown dtype
    b'{"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
    b'{"x": {"dtype": "F32", "shape": [1]}}',
    b'[1, 2]',
])
def test_malformed_headers_are_user_errors(tmp_path, header):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(UserError, match="bad.safetensors is not a valid safetensors file") as e:
        read_safetensors(path)
    assert "\n" not in str(e.value)


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read|not a valid safetensors"):
        read_safetensors(tmp_path / "none.safetensors")
