"""model.losses and model.objectives: the fused, chunked head losses against the readable reference, and DPO."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.model import losses as loss
from jaxgpt.model import objectives
from jaxgpt.model.losses import IGNORE_INDEX, cross_entropy
from jaxgpt.model.gpt import GPT, init_params


def test_cross_entropy_ignores_padding():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.array([[1, 2, IGNORE_INDEX], [0, IGNORE_INDEX, IGNORE_INDEX]])
    total, count = cross_entropy(logits, targets)
    logp = jax.nn.log_softmax(logits)
    expected = -(logp[0, 0, 1] + logp[0, 1, 2] + logp[1, 0, 0])
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert int(count) == 3


def _plain_loss(params, model, x, y):
    total, count = cross_entropy(model.apply({"params": params}, x), y)
    return total / jnp.maximum(count, 1)


def _fused_loss(params, model, x, y):
    total, sums = objectives.language_model(model)(params, {}, (x, y), None)
    return total / jnp.maximum(sums["count"], 1)


def _batch(cfg):
    x = jax.random.randint(jax.random.key(1), (3, 16), 0, cfg.vocab_size)
    return x, jnp.roll(x, -1, axis=1).at[0, 3:7].set(IGNORE_INDEX).at[2, :].set(IGNORE_INDEX)


@pytest.mark.parametrize("chunk_tokens", [1024, 16, 5])  # one chunk; 3 chunks of 16; 12 chunks of 4
def test_fused_chunked_loss_equals_plain_loss_and_gradient(tiny_model, chunk_tokens, monkeypatch):
    monkeypatch.setattr(loss, "HEAD_CHUNK_TOKENS", chunk_tokens)
    cfg = dataclasses.replace(tiny_model, vocab_size=101)  # not a multiple of anything convenient
    model, params = GPT(cfg), init_params(cfg, jax.random.key(0))
    x, y = _batch(cfg)
    want, want_grads = jax.value_and_grad(_plain_loss)(params, model, x, y)
    got, grads = jax.value_and_grad(_fused_loss)(params, model, x, y)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(_fused_loss(params, model, x, y), want, atol=1e-6)  # the primal path too
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("chunk_tokens", [1024, 5])
def test_token_logprobs_equal_log_softmax_and_their_gradient(tiny_model, chunk_tokens):
    cfg = dataclasses.replace(tiny_model, vocab_size=101)
    model, params = GPT(cfg), init_params(cfg, jax.random.key(0))
    x, y = _batch(cfg)
    weights = jax.random.normal(jax.random.key(2), y.shape)  # a non-uniform function of the per-token values

    def plain(params):
        logp = jax.nn.log_softmax(model.apply({"params": params}, x))
        picked = jnp.take_along_axis(logp, jnp.where(y == IGNORE_INDEX, 0, y)[..., None], -1)[..., 0]
        return jnp.where(y == IGNORE_INDEX, 0.0, picked)

    def chunked(params):
        h, head = model.apply({"params": params}, x, method=GPT.features)
        return loss.token_logprobs(h.reshape(-1, cfg.n_embd), head, y.reshape(-1), cfg.dtype,
                                   chunk_tokens).reshape(y.shape)

    np.testing.assert_allclose(chunked(params), plain(params), atol=1e-5)
    g1 = jax.grad(lambda p: jnp.sum(jnp.sin(chunked(p)) * weights))(params)
    g0 = jax.grad(lambda p: jnp.sum(jnp.sin(plain(p)) * weights))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_fused_loss_with_every_target_ignored_is_zero(tiny_model):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    x = jnp.zeros((2, 8), jnp.int32)
    value, grads = jax.value_and_grad(_fused_loss)(params, model, x, jnp.full((2, 8), IGNORE_INDEX))
    assert float(value) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("dtype", ["bfloat16"] + ["float16"] * (jax.default_backend() != "cpu"))  # no f16 on CPU
def test_sixteen_bit_weights_get_gradients_of_their_own_dtype(tiny_model, dtype):
    """The fused loss's gradients take the weights' dtype, so the head's and the lookup's wte gradients add up."""
    cfg = dataclasses.replace(tiny_model, dtype=dtype, param_dtype=dtype)
    model, params = GPT(cfg), init_params(cfg, jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    grads = jax.grad(_fused_loss)(params, model, x, jnp.roll(x, -1, axis=1))
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(dtype)}
    f32 = dataclasses.replace(cfg, dtype="float32", param_dtype="float32")
    want = jax.grad(_plain_loss)(jax.tree.map(lambda a: a.astype(jnp.float32), params), GPT(f32), x,
                                 jnp.roll(x, -1, axis=1))
    np.testing.assert_allclose(np.asarray(grads["wte"]["embedding"], np.float32), want["wte"]["embedding"],
                               atol=2e-3)  # 16-bit rounding of a float32 reference


def test_dpo_loss_is_ln2_when_policy_equals_reference_and_falls_with_the_margin():
    lp = jnp.array([-3.0, -7.5, -1.25])
    losses, chosen, rejected = loss.dpo_loss(lp, lp[::-1], lp, lp[::-1], beta=0.1)
    assert np.array_equal(np.asarray(losses), np.full(3, np.float32(math.log(2))))
    assert np.all(np.asarray(chosen) == 0) and np.all(np.asarray(rejected) == 0)
    better, _, _ = loss.dpo_loss(lp + 1.0, lp[::-1], lp, lp[::-1], beta=0.1)  # chosen made likelier
    np.testing.assert_allclose(better, -jax.nn.log_sigmoid(0.1), rtol=1e-6)


def test_preference_objective_at_the_reference_is_ln2(tiny_model):
    """The DPO objective on a model against its own log-probabilities: exactly ln 2 per pair."""
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(3), (4, 2, 12), 0, tiny_model.vocab_size)
    targets = jnp.roll(tokens, -1, axis=-1).at[:, :, :5].set(IGNORE_INDEX)  # the prompt is not scored
    ref = objectives.sequence_logprobs(model, None, params, {}, tokens.reshape(8, 12), targets.reshape(8, 12)).reshape(4, 2)
    total, sums = objectives.preference(model, beta=0.5)(params, {}, (tokens, targets, ref, jnp.ones(4)), None)
    assert float(total / sums["count"]) == np.float32(math.log(2))
    assert float(sums["reward_margin"]) == 0.0 and float(sums["reward_accuracy"]) == 0.0
