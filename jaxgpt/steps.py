"""Pure training and evaluation steps: `train_step(state, batch) -> (state, metrics)` and `eval_step`.

Nothing here touches files or the terminal. Static settings (the model, the optimiser, the seed) are bound
with `functools.partial` before `jax.jit`; see `trainer.py` for the shardings and donation.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxgpt.model import GPT

IGNORE_INDEX = -100  # targets with this value (padding) take no part in the loss, as in PyTorch


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs besides the config: the step, the weights, Adam's moments, and a
    record of updates skipped because their loss or gradient was not finite."""

    step: jax.Array
    params: Any
    opt_state: Any
    skipped: jax.Array  # how many updates were skipped
    first_skipped: jax.Array  # the step (1-based) of the first skipped update, 0 if none

    @staticmethod
    def create(params, tx: optax.GradientTransformation) -> TrainState:
        def zero():  # three separate buffers: a donated state may not hold one buffer twice
            return jnp.zeros((), jnp.int32)

        return TrainState(step=zero(), params=params, opt_state=tx.init(params), skipped=zero(), first_skipped=zero())


def cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed next-token cross-entropy over targets != IGNORE_INDEX, and how many targets counted.

    Args:
        logits: (..., vocab) float32.
        targets: (...) int ids or IGNORE_INDEX.
    """
    valid = targets != IGNORE_INDEX
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
    return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(valid)


def loss_fn(params, model: GPT, x: jax.Array, y: jax.Array, dropout_key=None) -> jax.Array:
    """Mean cross-entropy of the model on one batch x, y: (B, T)."""
    deterministic = dropout_key is None
    rngs = None if deterministic else {"dropout": dropout_key}
    logits = model.apply({"params": params}, x, deterministic=deterministic, rngs=rngs)  # (B, T, V)
    total, count = cross_entropy(logits, y)
    return total / jnp.maximum(count, 1)


def train_step(state: TrainState, batch: tuple[jax.Array, jax.Array], *, model: GPT,
               tx: optax.GradientTransformation, seed: int = 0) -> tuple[TrainState, dict]:
    """One optimiser update from `grad_accum` micro-batches.

    Args:
        state: the TrainState (donated by the caller's jit).
        batch: (x, y), each (grad_accum, micro_batch, T) int32.
    Returns:
        The new state and on-device metrics: loss (mean over micro-batches), grad_norm (before clipping)
        and skipped (updates skipped so far). An update whose loss or gradient is not finite is not
        applied (the weights and optimizer state stay as they were) and is counted instead.
    """
    x, y = batch
    use_dropout = model.config.dropout > 0
    step_key = jax.random.fold_in(jax.random.key(seed), state.step)  # same step -> same dropout masks
    grad_fn = jax.value_and_grad(loss_fn)

    def micro(carry, inputs):
        loss_sum, grad_sum = carry
        i, xb, yb = inputs
        key = jax.random.fold_in(step_key, i) if use_dropout else None
        loss, grads = grad_fn(state.params, model, xb, yb, key)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    n = x.shape[0]
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (loss, grads), _ = jax.lax.scan(micro, (jnp.zeros(()), zeros), (jnp.arange(n), x, y))
    loss, grads = loss / n, jax.tree.map(lambda g: g / n, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(ok, new, old))
    step = state.step + 1
    skipped = state.skipped + (~ok).astype(jnp.int32)
    first = jnp.where((state.first_skipped == 0) & ~ok, step, state.first_skipped)
    state = TrainState(step=step, params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                       skipped=skipped, first_skipped=first)
    return state, {"loss": loss, "grad_norm": grad_norm, "skipped": skipped, "first_skipped": first}


def eval_step(params, batch: tuple[jax.Array, jax.Array], *, model: GPT) -> dict:
    """Mean loss on one (x, y) batch of shape (B, T), dropout off."""
    x, y = batch
    return {"loss": loss_fn(params, model, x, y)}
