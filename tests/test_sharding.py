"""Mesh shapes, logical-axis rules and partition specs, without needing many devices (see
test_sharded.py for training on 8 fake devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgpt import sharding
from jaxgpt.config import MeshConfig, ModelConfig, parse_rules
from jaxgpt.errors import UserError
from jaxgpt.model import init_params


@pytest.mark.parametrize("mesh, n, shape", [
    (MeshConfig(), 8, (8, 1, 1)),
    (MeshConfig(data=-1, fsdp=2), 8, (4, 2, 1)),
    (MeshConfig(data=1, fsdp=-1, tensor=2), 8, (1, 4, 2)),
    (MeshConfig(data=2, fsdp=2, tensor=2), 8, (2, 2, 2)),
    (MeshConfig(), 1, (1, 1, 1)),
])
def test_mesh_shape_fills_the_rest(mesh, n, shape):
    assert sharding.mesh_shape(mesh, n) == shape


@pytest.mark.parametrize("mesh, n, message", [
    (MeshConfig(data=2, fsdp=2), 8, "has 4 devices but there are 8"),
    (MeshConfig(fsdp=3), 8, "need a multiple of 3 devices"),
])
def test_impossible_mesh_shapes(mesh, n, message):
    with pytest.raises(UserError, match=message):
        sharding.mesh_shape(mesh, n)


def test_rules_parse_and_refuse_unknown_names():
    assert parse_rules("vocab=tensor, embed=fsdp,mlp=none") == {"vocab": "tensor", "embed": "fsdp", "mlp": None}
    for bad in ("embed", "width=fsdp", "embed=gpu"):
        with pytest.raises(UserError, match="must be LOGICAL=MESH"):
            parse_rules(bad)


def test_every_weight_matrix_has_logical_axes():
    """The table names every >= 2-D weight of GPT-2, with one logical axis per dimension."""
    params = jax.eval_shape(lambda: init_params(ModelConfig.preset("gpt2", n_layer=2), jax.random.key(0)))
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = sharding._path_names(path)
        axes = sharding.logical_axes(names)
        if leaf.ndim >= 2:
            assert axes is not None and len(axes) == leaf.ndim, names
        elif axes is not None:
            assert len(axes) == 1, names


class _FakeMesh:  # spec_for only reads the axis sizes
    shape = {"data": 2, "fsdp": 4, "tensor": 2}


def test_specs_follow_the_rules_and_keep_uneven_dimensions_whole():
    rules = parse_rules(MeshConfig().rules)
    mesh = _FakeMesh()
    kernel = ("params", "h_3", "mlp", "c_fc", "kernel")
    assert sharding.spec_for(kernel, (768, 3072), mesh, rules) == P("fsdp", "tensor")
    assert sharding.spec_for(("opt_state", "1", "0", "mu", *kernel[1:]), (768, 3072), mesh, rules) == \
        P("fsdp", "tensor")  # Adam's moments follow their weights
    # GPT-2's vocabulary (50257) is odd: the vocab dimension stays whole, the embedding dimension is split.
    assert sharding.spec_for(("params", "wte", "embedding"), (50257, 768), mesh, rules) == P(None, "fsdp")
    assert sharding.spec_for(("params", "wte", "embedding"), (50304, 768), mesh, rules) == P("tensor", "fsdp")
    assert sharding.spec_for(("params", "ln_f", "scale"), (768,), mesh, rules) == P()
    assert sharding.spec_for(("step",), (), mesh, rules) == P()
    # A width that fsdp does not divide stays whole too.
    assert sharding.spec_for(kernel, (30, 120), mesh, rules) == P(None, "tensor")
    # Two logical axes mapped to one mesh axis: only the first takes it.
    same = parse_rules("embed=fsdp,mlp=fsdp")
    assert sharding.spec_for(kernel, (768, 3072), mesh, same) == P("fsdp", None)


def test_assemble_reads_each_piece_once_for_all_outputs():
    mesh = sharding.make_mesh(MeshConfig())
    seen = []
    data = np.arange(24).reshape(4, 6)

    def read(index):
        seen.append(index)
        return data[index], -data[index]

    x, y = sharding.assemble((4, 6), sharding.eval_batch_sharding(mesh), read, 2)
    np.testing.assert_array_equal(np.asarray(x), data)
    np.testing.assert_array_equal(np.asarray(y), -data)
    assert len(seen) == jax.local_device_count() == 1  # one read serves both arrays
