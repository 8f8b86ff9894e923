"""Pure training and evaluation steps: `train_step(state, batch) -> (state, metrics)` and `eval_step`.

Nothing here touches files or the terminal. Static settings (the model, the optimiser, the seed) are bound
with `functools.partial` before `jax.jit`; see `trainer.py` for the shardings and donation.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxgpt.model import GPT

IGNORE_INDEX = -100  # targets with this value (padding) take no part in the loss, as in PyTorch


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs besides the config: the step, the weights and Adam's moments."""

    step: jax.Array
    params: Any
    opt_state: Any

    @staticmethod
    def create(params, tx: optax.GradientTransformation) -> TrainState:
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


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
        The new state and on-device metrics: loss (mean over micro-batches) and grad_norm (before clipping).
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
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: tuple[jax.Array, jax.Array], *, model: GPT) -> dict:
    """Mean loss on one (x, y) batch of shape (B, T), dropout off."""
    x, y = batch
    return {"loss": loss_fn(params, model, x, y)}
