"""The model's speed options: which attention kernel runs, and rematerialisation. Neither may change results."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.model.attention import attention_implementation, cudnn_compiles
from jaxgpt.config import Config, validate
from jaxgpt.errors import UserError
from jaxgpt.model.gpt import GPT, init_params, for_backend

SHAPE = (2, 128, 12, 64)  # (B, T, H, D)


def _never(*_):
    raise AssertionError("the cuDNN probe must not run here")


@pytest.mark.parametrize("backend,dtype,shape,probe,want", [
    ("gpu", "bfloat16", SHAPE, lambda *_: True, "cudnn"),
    ("gpu", "float16", SHAPE, lambda *_: True, "cudnn"),
    # Where no fused kernel runs, an accelerator recomputes the weights in the backward pass; a CPU keeps them.
    ("gpu", "bfloat16", SHAPE, lambda *_: False, "recompute"),  # the trial compilation failed
    ("gpu", "float32", SHAPE, _never, "recompute"),  # cuDNN's fused attention is 16-bit only
    ("gpu", "bfloat16", (2, 128, 10, 160), _never, "recompute"),  # head size above 128
    ("gpu", "bfloat16", (2, 128, 12, 60), _never, "recompute"),  # head size not a multiple of 8
    ("cpu", "bfloat16", SHAPE, _never, "xla"),
    ("tpu", "bfloat16", SHAPE, _never, "pallas"),
    ("tpu", "bfloat16", (2, 100, 12, 64), _never, "recompute"),  # Pallas's kernel needs T a multiple of 128
])
def test_auto_attention_takes_cudnn_only_where_it_can(backend, dtype, shape, probe, want):
    assert attention_implementation("auto", backend, dtype, shape, probe) == want


def test_recomputed_attention_equals_the_kept_weights_one():
    from jaxgpt.model.attention import causal_attention, recomputed_attention

    q, k, v = (jax.random.normal(jax.random.key(i), (2, 3, 16, 8)) for i in range(3))
    dy = jax.random.normal(jax.random.key(3), (2, 3, 16, 8))
    ys = {f: jax.vjp(f, q, k, v) for f in (causal_attention, recomputed_attention)}
    (y0, back0), (y1, back1) = ys.values()
    np.testing.assert_array_equal(y0, y1)
    for g0, g1 in zip(back0(dy), back1(dy)):
        np.testing.assert_allclose(g0, g1, rtol=1e-6, atol=1e-6)


def test_xla_attention_is_never_replaced():
    assert attention_implementation("xla", "gpu", "bfloat16", SHAPE, _never) == "xla"


def test_the_kernel_is_decided_once_before_tracing(tiny_model):
    """`for_backend` turns "auto" into the kernel the model then runs; cuDNN asked for where it cannot run is
    one line, not a failed compilation."""
    assert for_backend(tiny_model, 8, "cpu", _never).attention == "xla"
    gpu = dataclasses.replace(tiny_model, dtype="bfloat16", n_head=2, n_embd=32)  # head size 16
    assert for_backend(gpu, 8, "gpu", lambda shape, dtype: shape == (8, 16, 2, 16)).attention == "cudnn"
    assert for_backend(dataclasses.replace(gpu, attention="cudnn"), 8, "gpu", lambda *_: True).attention == "cudnn"
    with pytest.raises(UserError, match="model.attention=cudnn does not run here"):
        for_backend(dataclasses.replace(tiny_model, attention="cudnn"), 8, "cpu")
    assert for_backend(dataclasses.replace(tiny_model, dtype="float16"), 8, "cpu").attention == "xla"  # runs (below)


def test_cudnn_probe_says_no_off_a_gpu_even_while_tracing():
    if jax.default_backend() == "gpu":
        pytest.skip("on a GPU the probe may rightly succeed")
    cudnn_compiles.cache_clear()
    assert cudnn_compiles(SHAPE, "bfloat16") is False
    seen = []  # a user's own code may ask while tracing: that must work the same way
    jax.jit(lambda x: seen.append(cudnn_compiles((1, 16, 2, 8), "float16")) or x)(jnp.zeros(2))
    assert seen == [False]


def test_attention_settings_give_identical_logits(tiny_model):
    params = init_params(tiny_model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, tiny_model.vocab_size)
    out = {a: GPT(dataclasses.replace(tiny_model, attention=a)).apply({"params": params}, tokens)
           for a in ("auto", "xla", "recompute")}
    np.testing.assert_array_equal(out["auto"], out["xla"])
    np.testing.assert_array_equal(out["recompute"], out["xla"])


def _loss(params, cfg, tokens):
    logits = GPT(cfg).apply({"params": params}, tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_recomputes_without_changing_loss_or_gradients(tiny_model, remat):
    cfg = dataclasses.replace(tiny_model, remat=remat)
    params = init_params(tiny_model, jax.random.key(0))
    assert jax.tree.structure(init_params(cfg, jax.random.key(0))) == jax.tree.structure(params)
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, tiny_model.vocab_size)
    grad = jax.jit(jax.value_and_grad(_loss), static_argnums=1)
    (l0, g0), (l1, g1) = grad(params, tiny_model, tokens), grad(params, cfg, tokens)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g0)

    def flops(c):
        cost = grad.lower(params, c, tokens).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    assert flops(cfg) > flops(tiny_model)  # the blocks' forward pass really runs twice


@pytest.mark.parametrize("key,value", [("attention", "flash"), ("remat", "yes")])
def test_unknown_option_values_are_refused(key, value):
    cfg = Config()
    with pytest.raises(UserError, match=f"model.{key} must be one of"):
        validate(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{key: value})))


def test_float16_compute_runs_on_a_cpu_close_to_float32(tiny_model, tmp_path):
    """jax.nn.dot_product_attention refused float16 on a CPU (no F16_F16_F32 dot), so float16 was refused there;
    jaxgpt's own attention runs it: logits and gradients close to float32's, and the loader reads such a model."""
    from jaxgpt.store import checkpoint
    from jaxgpt.store.loader import load

    f16 = dataclasses.replace(tiny_model, dtype="float16")
    params = init_params(tiny_model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, tiny_model.block_size), 0, tiny_model.vocab_size)

    def loss_and_grads(cfg):
        return jax.jit(jax.value_and_grad(lambda p: GPT(cfg).apply({"params": p}, tokens).mean()))(params)

    (loss16, grads16), (loss32, grads32) = loss_and_grads(f16), loss_and_grads(tiny_model)
    assert abs(float(loss16) - float(loss32)) < 1e-2
    for g16, g32 in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
        assert g16.dtype == jnp.float32  # float32 weights, float16 compute
        np.testing.assert_allclose(g16, g32, atol=2e-3)
    checkpoint.save_model(tmp_path / "f16", Config(model=f16), params, None, {})
    assert load(tmp_path / "f16").config.dtype == "float16"
