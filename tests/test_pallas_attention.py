"""Pallas's TPU flash attention (`model.attention=pallas`): where it is chosen, and that it computes what XLA's
attention does, run on a CPU in Pallas's TPU interpret mode, alone and per device under a mesh."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxgpt.model.attention import _pallas_blocks, attention_implementation, causal_attention, pallas_attention, pallas_supports
from jaxgpt.config import ModelConfig
from jaxgpt.errors import UserError
from jaxgpt.model.gpt import GPT, init_params, for_backend

PALLAS_MODEL = ModelConfig(vocab_size=64, block_size=128, n_layer=1, n_head=2, n_embd=32)


def _never(*_):
    raise AssertionError("the cuDNN probe must not run here")


def _qkv_dy(shape):
    return [jax.random.normal(jax.random.key(i), shape) for i in range(4)]


def _vjp_of(attention, q, k, v, dy):
    y, back = jax.vjp(attention, q, k, v)
    return y, back(dy)


@pytest.mark.parametrize("shape,dtype,ok", [
    ((8, 1024, 12, 64), "bfloat16", True),  # GPT-2 124M
    ((8, 128, 12, 64), "float32", True),
    ((8, 256, 2, 256), "bfloat16", True),  # a head size that is a multiple of 128
    ((8, 256, 2, 16), "bfloat16", True),
    ((8, 1000, 12, 64), "bfloat16", False),  # T not a multiple of 128
    ((8, 64, 12, 64), "bfloat16", False),
    ((8, 256, 4, 192), "bfloat16", False),  # above 128 and not a multiple of it
    ((8, 256, 12, 64), "float16", False),
])
def test_supported_shapes(shape, dtype, ok):
    assert pallas_supports(shape, dtype) is ok


def test_block_sizes_divide_the_sequence():
    assert [_pallas_blocks(T).block_q for T in (128, 384, 768, 1024, 2048)] == [128, 128, 256, 512, 512]


def test_auto_takes_pallas_on_a_tpu_only():
    shape = (8, 1024, 12, 64)
    assert attention_implementation("auto", "tpu", "bfloat16", shape, _never) == "pallas"
    assert attention_implementation("pallas", "tpu", "float32", shape, _never) == "pallas"
    assert attention_implementation("auto", "tpu", "bfloat16", (8, 1000, 12, 64), _never) != "pallas"
    assert attention_implementation("auto", "cpu", "bfloat16", shape, _never) == "xla"
    assert attention_implementation("auto", "gpu", "bfloat16", shape, lambda *_: False) != "pallas"
    assert for_backend(PALLAS_MODEL, 8, "tpu", _never).attention == "pallas"


@pytest.mark.parametrize("backend,dtype,shape", [
    ("cpu", "float32", (8, 1024, 12, 64)),
    ("gpu", "bfloat16", (8, 1024, 12, 64)),
    ("tpu", "bfloat16", (8, 1000, 12, 64)),
    ("tpu", "float16", (8, 1024, 12, 64)),
])
def test_pallas_is_refused_where_it_cannot_run(backend, dtype, shape):
    with pytest.raises(UserError, match="model.attention=pallas does not run here.*use --model.attention=auto"):
        attention_implementation("pallas", backend, dtype, shape, _never)


# (B, H, T, D): T = 128 is one block of the kernel, 384 three (the tiled path that skips blocks above the diagonal).
@pytest.mark.parametrize("shape", [(2, 2, 128, 64), (1, 2, 384, 64)])
def test_kernel_equals_causal_attention(shape):
    q, k, v, dy = _qkv_dy(shape)
    with pltpu.force_tpu_interpret_mode():
        y, grads = _vjp_of(pallas_attention, q, k, v, dy)
    y0, grads0 = _vjp_of(causal_attention, q, k, v, dy)
    np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-5)
    for g, g0 in zip(grads, grads0):
        np.testing.assert_allclose(g, g0, rtol=1e-5, atol=1e-5)


def _loss(params, cfg, tokens):
    """The next-token loss of a GPT on tokens (B, T + 1), and its logits (B, T, V)."""
    logits = GPT(cfg).apply({"params": params}, tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1)), logits


def _gpt_equals_xla(grad, tokens):
    """`grad` (value_and_grad of `_loss`) gives the same loss, logits and gradients with attention=pallas, in
    interpret mode, as with attention=xla."""
    params = init_params(PALLAS_MODEL, jax.random.key(0))
    with pltpu.force_tpu_interpret_mode():
        (loss, logits), grads = grad(params, dataclasses.replace(PALLAS_MODEL, attention="pallas"), tokens)
    (loss0, logits0), grads0 = grad(params, PALLAS_MODEL, tokens)
    np.testing.assert_allclose(logits, logits0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, grads0)


def test_gpt_with_pallas_equals_xla():
    tokens = jax.random.randint(jax.random.key(1), (2, PALLAS_MODEL.block_size + 1), 0, PALLAS_MODEL.vocab_size)
    _gpt_equals_xla(jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnums=1), tokens)


def test_dropout_and_unsupported_lengths_take_xla_kernels():
    """Outside interpret mode a Pallas kernel cannot compile on a CPU, so equal outputs here mean it never ran:
    training with attention dropout takes `attend`, and a T the kernel does not take, XLA's kernel."""
    params = init_params(PALLAS_MODEL, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, PALLAS_MODEL.block_size), 0, PALLAS_MODEL.vocab_size)
    for cfg, toks, deterministic in ((dataclasses.replace(PALLAS_MODEL, dropout=0.1), tokens, False),
                                     (PALLAS_MODEL, tokens[:, :100], True)):
        out = [GPT(dataclasses.replace(cfg, attention=a)).apply(
            {"params": params}, toks, deterministic=deterministic, rngs={"dropout": jax.random.key(2)})
            for a in ("pallas", "xla")]
        np.testing.assert_array_equal(out[0], out[1])


def _sharded_check() -> None:
    """Run with 8 CPU devices: on a (data 2, fsdp 2, tensor 2) mesh, inside `activation_rules`, the kernel runs
    per device on (1, 1, T, D) blocks and gives causal_attention's outputs and gradients; so does a GPT."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxgpt.config import MeshConfig
    from jaxgpt.train.sharding import activation_rules, make_mesh

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rules = activation_rules(mesh, MeshConfig().rules)
    # Each device's blocks stay under 100 KiB: a larger host copy made inside the interpreter's callbacks
    # waits for CPU threads that the other devices' kernels hold.
    q, k, v, dy = (jax.device_put(a, NamedSharding(mesh, P())) for a in _qkv_dy((4, 2, 128, 64)))  # (B, H, T, D)
    step = jax.jit(rules(lambda *qkv: _vjp_of(pallas_attention, *qkv, dy)))
    with pltpu.force_tpu_interpret_mode():
        assert "tensor<1x1x128x64xf32>" in step.lower(q, k, v).as_text()  # each device's block
        y, grads = step(q, k, v)
    y0, grads0 = _vjp_of(causal_attention, q, k, v, dy)
    for a, b in zip((y, *grads), (y0, *grads0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert grads[0].sharding.spec == P(("data", "fsdp"), "tensor")

    tokens = jax.random.randint(jax.random.key(1), (4, PALLAS_MODEL.block_size + 1), 0, PALLAS_MODEL.vocab_size)
    tokens = jax.device_put(tokens, NamedSharding(mesh, P(("data", "fsdp"))))
    _gpt_equals_xla(jax.jit(rules(jax.value_and_grad(_loss, has_aux=True)), static_argnums=1), tokens)
    print("sharded pallas attention ok")


def test_sharded_kernel_equals_causal_attention_on_a_mesh():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(__file__))
    assert done.returncode == 0 and "sharded pallas attention ok" in done.stdout, done.stderr[-3000:]


if __name__ == "__main__":
    _sharded_check()
