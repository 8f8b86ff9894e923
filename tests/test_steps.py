import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import steps
from jaxgpt.config import TrainConfig
from jaxgpt.model import GPT, init_params
from jaxgpt.optim import decay_mask, lr_schedule, make_optimizer
from jaxgpt.steps import IGNORE_INDEX, TrainState, cross_entropy, eval_step, train_step


def _setup(cfg, tc, accum_batch):
    tx = make_optimizer(tc)
    state = TrainState.create(init_params(cfg, jax.random.key(0)), tx)
    step = jax.jit(functools.partial(train_step, model=GPT(cfg), tx=tx, seed=0), donate_argnums=0)
    x = jax.random.randint(jax.random.key(1), accum_batch, 0, cfg.vocab_size)
    y = jnp.roll(x, -1, axis=-1)
    return state, step, (x, y)


def test_loss_falls_when_overfitting_one_batch(tiny_model):
    tc = TrainConfig(learning_rate=1e-2, warmup_steps=0, max_steps=60, min_lr=1e-2)
    state, step, batch = _setup(tiny_model, tc, (1, 4, 16))
    first = None
    for _ in range(60):
        state, m = step(state, batch)
        first = float(m["loss"]) if first is None else first
    assert first > 3.5 and float(m["loss"]) < 0.5 * first
    assert int(state.step) == 60


def test_gradient_accumulation_equals_one_big_batch(tiny_model):
    tc = TrainConfig(learning_rate=1e-3, warmup_steps=0)
    state1, step1, (x, y) = _setup(tiny_model, tc, (1, 8, 16))
    state2, step2, _ = _setup(tiny_model, tc, (1, 8, 16))
    s1, m1 = step1(state1, (x, y))
    s2, m2 = step2(state2, (x.reshape(2, 4, 16), y.reshape(2, 4, 16)))
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, atol=2e-5)  # Adam amplifies float noise in near-zero grads


def test_same_seed_same_losses_with_dropout(tiny_model):
    cfg = dataclasses.replace(tiny_model, dropout=0.1)
    tc = TrainConfig(learning_rate=3e-3, warmup_steps=0)
    runs = []
    for _ in range(2):
        state, step, batch = _setup(cfg, tc, (1, 4, 16))
        losses = []
        for _ in range(3):
            state, m = step(state, batch)
            losses.append(float(m["loss"]))
        runs.append(losses)
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1]


def test_cross_entropy_ignores_padding():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.array([[1, 2, IGNORE_INDEX], [0, IGNORE_INDEX, IGNORE_INDEX]])
    total, count = cross_entropy(logits, targets)
    logp = jax.nn.log_softmax(logits)
    expected = -(logp[0, 0, 1] + logp[0, 1, 2] + logp[1, 0, 0])
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert int(count) == 3


def test_eval_step_matches_manual_loss(tiny_model):
    params = init_params(tiny_model, jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, tiny_model.vocab_size)
    logits = GPT(tiny_model).apply({"params": params}, x)
    manual = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x[..., None], axis=-1))
    np.testing.assert_allclose(eval_step(params, (x, x), model=GPT(tiny_model))["loss"], manual, rtol=1e-5)


def test_schedule_and_decay_mask(tiny_model):
    tc = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    sched = lr_schedule(tc)
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6
    assert abs(float(sched(110)) - 0.1) < 1e-6 and abs(float(sched(500)) - 0.1) < 1e-6
    mask = decay_mask(init_params(tiny_model, jax.random.key(0)))
    assert mask["h_0"]["attn"]["c_attn"]["kernel"] and mask["wte"]["embedding"]
    assert not mask["h_0"]["attn"]["c_attn"]["bias"] and not mask["ln_f"]["scale"]


def _plain_loss(params, model, x, y):
    total, count = cross_entropy(model.apply({"params": params}, x), y)
    return total / jnp.maximum(count, 1)


@pytest.mark.parametrize("chunk_tokens", [1024, 16, 5])  # one chunk; 3 chunks of 16; 12 chunks of 4
def test_fused_chunked_loss_equals_plain_loss_and_gradient(tiny_model, chunk_tokens, monkeypatch):
    monkeypatch.setattr(steps, "HEAD_CHUNK_TOKENS", chunk_tokens)
    cfg = dataclasses.replace(tiny_model, vocab_size=101)  # not a multiple of anything convenient
    model, params = GPT(cfg), init_params(cfg, jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (3, 16), 0, cfg.vocab_size)
    y = jnp.roll(x, -1, axis=1).at[0, 3:7].set(IGNORE_INDEX).at[2, :].set(IGNORE_INDEX)
    want, want_grads = jax.value_and_grad(_plain_loss)(params, model, x, y)
    got, grads = jax.value_and_grad(steps.loss_fn)(params, model, x, y)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(steps.loss_fn(params, model, x, y), want, atol=1e-6)  # the primal path too
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_fused_loss_with_every_target_ignored_is_zero(tiny_model):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    x = jnp.zeros((2, 8), jnp.int32)
    loss, grads = jax.value_and_grad(steps.loss_fn)(params, model, x, jnp.full((2, 8), IGNORE_INDEX))
    assert float(loss) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_a_non_finite_update_leaves_the_state_as_it_was(tiny_model):
    tc = TrainConfig(learning_rate=1e-3, warmup_steps=0)
    state, step, batch = _setup(tiny_model, tc, (1, 2, 8))
    state = state.replace(params={**state.params, "ln_f": {**state.params["ln_f"],
                                                           "scale": state.params["ln_f"]["scale"].at[0].set(jnp.nan)}})
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    new, m = step(state, batch)
    assert int(new.skipped) == 1 and int(new.first_skipped) == 1 and int(new.step) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((new.params, new.opt_state))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["bfloat16"] + ["float16"] * (jax.default_backend() != "cpu"))  # no f16 on CPU
def test_sixteen_bit_weights_train_and_get_gradients_of_their_own_dtype(tiny_model, dtype):
    """The fused loss's gradients take the weights' dtype, so the head's and the lookup's wte gradients add up."""
    cfg = dataclasses.replace(tiny_model, dtype=dtype, param_dtype=dtype)
    model, params = GPT(cfg), init_params(cfg, jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    grads = jax.grad(steps.loss_fn)(params, model, x, jnp.roll(x, -1, axis=1))
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(dtype)}
    want = jax.grad(_plain_loss)(jax.tree.map(lambda a: a.astype(jnp.float32), params),
                                 dataclasses.replace(model, config=dataclasses.replace(cfg, dtype="float32",
                                                                                       param_dtype="float32")),
                                 x, jnp.roll(x, -1, axis=1))
    np.testing.assert_allclose(np.asarray(grads["wte"]["embedding"], np.float32), want["wte"]["embedding"],
                               atol=2e-3)  # 16-bit rounding of a float32 reference
    state, step, batch = _setup(cfg, TrainConfig(learning_rate=1e-2, warmup_steps=0, min_lr=1e-2), (1, 4, 16))
    losses = []
    for _ in range(10):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
