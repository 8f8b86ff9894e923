"""Mesh shapes, logical-axis rules and partition specs, without needing many devices (see
test_sharded.py for training on 8 fake devices)."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from jaxgpt.train import sharding
from jaxgpt.config import MeshConfig, ModelConfig, parse_rules
from jaxgpt.errors import UserError
from jaxgpt.model.gpt import GPT, init_boxed


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


def test_every_weight_matrix_declares_logical_axes():
    """The model declares, where it creates them, one logical axis per dimension of every >= 2-D weight."""
    boxed = jax.eval_shape(lambda: init_boxed(GPT(ModelConfig.preset("gpt2", n_layer=2)), jax.random.key(0)))
    axes = sharding.param_axes(boxed)
    for path, leaf in traverse_util.flatten_dict(nn.unbox(boxed)).items():
        if leaf.ndim >= 2:
            assert path in axes and len(axes[path]) == leaf.ndim, path
        elif path in axes:
            assert len(axes[path]) == 1, path
    assert axes[("wte", "embedding")] == ("vocab", "embed")
    assert axes[("h_1", "mlp", "c_fc", "kernel")] == ("embed", "mlp")
    assert axes[("h_0", "attn", "c_attn", "bias")] == ("heads",)
    assert ("ln_f", "scale") not in axes  # LayerNorms stay replicated


class _FakeMesh:  # spec_for only reads the axis sizes
    shape = {"data": 2, "fsdp": 4, "tensor": 2}


def test_specs_follow_the_rules_and_keep_uneven_dimensions_whole():
    rules = parse_rules(MeshConfig().rules)
    mesh = _FakeMesh()
    kernel = ("embed", "mlp")
    assert sharding.spec_for(kernel, (768, 3072), mesh, rules) == P("fsdp", "tensor")
    # GPT-2's vocabulary (50257) is odd: the vocab dimension stays whole, the embedding dimension is split.
    assert sharding.spec_for(("vocab", "embed"), (50257, 768), mesh, rules) == P(None, "fsdp")
    assert sharding.spec_for(("vocab", "embed"), (50304, 768), mesh, rules) == P("tensor", "fsdp")
    assert sharding.spec_for(None, (768,), mesh, rules) == P()
    assert sharding.spec_for(None, (), mesh, rules) == P()
    # A width that fsdp does not divide stays whole too.
    assert sharding.spec_for(kernel, (30, 120), mesh, rules) == P(None, "tensor")
    # Two logical axes mapped to one mesh axis: only the first takes it.
    same = parse_rules("embed=fsdp,mlp=fsdp")
    assert sharding.spec_for(kernel, (768, 3072), mesh, same) == P("fsdp", None)


def test_optimizer_moments_follow_their_weights():
    axes = {("h_3", "mlp", "c_fc", "kernel"): ("embed", "mlp"), ("wte", "embedding"): ("vocab", "embed")}
    moment = ("opt_state", "1", "0", "mu", "h_3", "mlp", "c_fc", "kernel")
    assert sharding.axes_of(moment, axes) == ("embed", "mlp")
    assert sharding.axes_of(("params", "wte", "embedding"), axes) == ("vocab", "embed")
    assert sharding.axes_of(("step",), axes) is None


def test_put_batch_reads_only_the_local_pieces_once():
    mesh = sharding.make_mesh(MeshConfig())
    seen = []
    data = np.arange(24).reshape(4, 6)

    class Lazy:  # a batch left on disk: reads record what was asked for
        shape = data.shape

        def __getitem__(self, index):
            seen.append(index)
            return data[index]

    (x, y) = sharding.put_batch((Lazy(), -data), sharding.eval_batch_sharding(mesh))
    np.testing.assert_array_equal(np.asarray(x), data)
    np.testing.assert_array_equal(np.asarray(y), -data)
    assert len(seen) == jax.local_device_count() == 1  # one read of the one local piece
