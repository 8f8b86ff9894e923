"""The pure train step over any loss function: learning, exact gradient accumulation, determinism, the
optimizer's schedule and decay mask, and non-finite updates that are never applied."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.config import TrainConfig
from jaxgpt.model import losses as loss
from jaxgpt.model import objectives
from jaxgpt.model.gpt import GPT, init_params
from jaxgpt.train.optim import decay_mask, lr_schedule, make_optimizer
from jaxgpt.train.steps import TrainState, eval_step, train_step


def _setup(cfg, tc, accum_batch, unroll=1):
    tx = make_optimizer(tc)
    state = TrainState.create(init_params(cfg, jax.random.key(0)), tx)
    step = jax.jit(functools.partial(train_step, loss_fn=objectives.language_model(GPT(cfg)), tx=tx, seed=0,
                                     dropout=cfg.dropout > 0, unroll=unroll), donate_argnums=0)
    x = jax.random.randint(jax.random.key(1), accum_batch, 0, cfg.vocab_size)
    y = jnp.roll(x, -1, axis=-1)
    return state, step, (x, y)


def test_loss_falls_when_overfitting_one_batch(tiny_model):
    tc = TrainConfig(learning_rate=1e-2, warmup_steps=0, max_steps=60, min_lr=1e-2)
    state, step, batch = _setup(tiny_model, tc, (1, 4, 16))
    first = None
    for _ in range(60):
        state, m = step(state, batch, {})
        first = float(m["loss"]) if first is None else first
    assert first > 3.5 and float(m["loss"]) < 0.5 * first
    assert int(state.step) == 60


@pytest.mark.parametrize("ignored", [False, True])
def test_gradient_accumulation_equals_one_big_batch(tiny_model, ignored):
    """Micro-batches give exactly one big batch's gradient, also when the micro-batches count different
    numbers of targets (padding): the summed objective is divided by the total count once."""
    tc = TrainConfig(learning_rate=1e-3, warmup_steps=0)
    state1, step1, (x, y) = _setup(tiny_model, tc, (1, 8, 16))
    state2, step2, _ = _setup(tiny_model, tc, (1, 8, 16))
    if ignored:  # the first micro-batch keeps 13 targets per row, the second 3
        y = y.at[0, :4, 13:].set(loss.IGNORE_INDEX).at[0, 4:, 3:].set(loss.IGNORE_INDEX)
    s1, m1 = step1(state1, (x, y), {})
    s2, m2 = step2(state2, (x.reshape(2, 4, 16), y.reshape(2, 4, 16)), {})
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, atol=2e-5)  # Adam amplifies float noise in near-zero grads


@pytest.mark.parametrize("unroll", [2, 3])
def test_unrolled_accumulation_equals_one_big_batch(tiny_model, unroll):
    """Two or three micro-batches per pass of the accumulation loop (3 leaves a remainder of the 4) still
    take every micro-batch once: the step is one big batch's."""
    tc = TrainConfig(learning_rate=1e-3, warmup_steps=0)
    state1, step1, (x, y) = _setup(tiny_model, tc, (1, 8, 16))
    state2, step2, _ = _setup(tiny_model, tc, (1, 8, 16), unroll=unroll)
    s1, m1 = step1(state1, (x, y), {})
    s2, m2 = step2(state2, (x.reshape(4, 2, 16), y.reshape(4, 2, 16)), {})
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_same_seed_same_losses_with_dropout(tiny_model):
    cfg = dataclasses.replace(tiny_model, dropout=0.1)
    tc = TrainConfig(learning_rate=3e-3, warmup_steps=0)
    runs = []
    for _ in range(2):
        state, step, batch = _setup(cfg, tc, (1, 4, 16))
        losses = []
        for _ in range(3):
            state, m = step(state, batch, {})
            losses.append(float(m["loss"]))
        runs.append(losses)
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1]


def test_eval_step_sums_match_a_manual_loss(tiny_model):
    params = init_params(tiny_model, jax.random.key(0))
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, tiny_model.vocab_size)
    logits = GPT(tiny_model).apply({"params": params}, x)
    manual = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x[..., None], axis=-1))
    sums = eval_step(params, (x, x), {}, loss_fn=objectives.language_model(GPT(tiny_model)))
    assert int(sums["count"]) == 32
    np.testing.assert_allclose(sums["loss"] / sums["count"], manual, rtol=1e-5)


def test_schedule_and_decay_mask(tiny_model):
    tc = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    sched = lr_schedule(tc)
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6
    assert abs(float(sched(110)) - 0.1) < 1e-6 and abs(float(sched(500)) - 0.1) < 1e-6
    constant = lr_schedule(dataclasses.replace(tc, lr_schedule="constant"))
    assert float(constant(0)) == 0.0 and abs(float(constant(5)) - 0.5) < 1e-6
    assert float(constant(10)) == float(constant(500)) == 1.0
    no_warmup = lr_schedule(dataclasses.replace(tc, lr_schedule="constant", warmup_steps=0))
    assert float(no_warmup(0)) == float(no_warmup(99)) == 1.0
    mask = decay_mask(init_params(tiny_model, jax.random.key(0)))
    assert mask["h_0"]["attn"]["c_attn"]["kernel"] and mask["wte"]["embedding"]
    assert not mask["h_0"]["attn"]["c_attn"]["bias"] and not mask["ln_f"]["scale"]


def test_a_non_finite_update_leaves_the_state_as_it_was(tiny_model):
    tc = TrainConfig(learning_rate=1e-3, warmup_steps=0)
    state, step, batch = _setup(tiny_model, tc, (1, 2, 8))
    state = state.replace(params={**state.params, "ln_f": {**state.params["ln_f"],
                                                           "scale": state.params["ln_f"]["scale"].at[0].set(jnp.nan)}})
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    new, m = step(state, batch, {})
    assert int(new.skipped) == 1 and int(new.first_skipped) == 1 and int(new.step) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((new.params, new.opt_state))):
        np.testing.assert_array_equal(a, b)


def test_frozen_weights_take_part_but_get_no_gradient(tiny_model):
    """The step trains only its state's params; what is passed as frozen is used by the loss and unchanged."""
    from jaxgpt.model.parts import partition

    tc = TrainConfig(learning_rate=1e-2, warmup_steps=0)
    params = init_params(tiny_model, jax.random.key(0))
    train_part, frozen = partition(params, lambda p: p[0] == "ln_f")
    tx = make_optimizer(tc)
    state = TrainState.create(train_part, tx)
    step = jax.jit(functools.partial(train_step, loss_fn=objectives.language_model(GPT(tiny_model)), tx=tx))
    x = jax.random.randint(jax.random.key(1), (1, 4, 16), 0, tiny_model.vocab_size)
    new, m = step(state, (x, jnp.roll(x, -1, axis=-1)), frozen)
    assert set(new.params) == {"ln_f"} and not np.array_equal(new.params["ln_f"]["scale"], train_part["ln_f"]["scale"])
    assert sum(a.size for a in jax.tree.leaves(new.opt_state)) <= 2 * 2 * tiny_model.n_embd + 2  # moments of ln_f only


def test_muon_orthogonalises_the_block_matrices_and_adam_the_rest(tiny_model):
    from jaxgpt.train.optim import muon_matrices

    params = init_params(dataclasses.replace(tiny_model, tie_embeddings=False), jax.random.key(0))
    specs = muon_matrices(params)
    assert specs["h_0"]["attn"]["c_attn"]["kernel"] is not None and specs["h_1"]["mlp"]["c_proj"]["kernel"] is not None
    assert specs["wte"]["embedding"] is None and specs["lm_head"]["embedding"] is None
    assert specs["h_0"]["attn"]["c_attn"]["bias"] is None and specs["ln_f"]["scale"] is None
    tc = TrainConfig(optimizer="muon", learning_rate=1e-2, warmup_steps=0, max_steps=40, min_lr=1e-2)
    state, step, batch = _setup(tiny_model, tc, (1, 4, 16))
    first = None
    for _ in range(40):
        state, m = step(state, batch, {})
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.5 * first
