"""Pure training and evaluation steps: `train_step(state, batch, frozen) -> (state, metrics)` and `eval_step`.

One step serves every objective: the loss function (see model/objectives.py) is bound with `functools.partial`, like the
optimiser and the seed, before `jax.jit`; see engine.py for the shardings and donation. Nothing here touches
files or the terminal. `frozen` holds the weights that do not train (none when pretraining); it is an
argument rather than part of the state so that checkpoints and the optimizer never carry it.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxgpt.model.objectives import LossFn


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs besides the config and the frozen weights: the step, the trainable
    weights, Adam's moments, and a record of updates skipped because their loss or gradient was not finite."""

    step: jax.Array
    params: Any  # the trainable part only
    opt_state: Any
    skipped: jax.Array  # how many updates were skipped
    first_skipped: jax.Array  # the step (1-based) of the first skipped update, 0 if none

    @staticmethod
    def create(params, tx: optax.GradientTransformation) -> TrainState:
        def zero():  # three separate buffers: a donated state may not hold one buffer twice
            return jnp.zeros((), jnp.int32)

        return TrainState(step=zero(), params=params, opt_state=tx.init(params), skipped=zero(), first_skipped=zero())


def means(sums: dict) -> dict:
    """Per-example (or per-token) means of a loss function's sums: every key divided by "count"."""
    count = jnp.maximum(sums["count"], 1)
    return {k: v / count for k, v in sums.items() if k != "count"}


def train_step(state: TrainState, batch: tuple, frozen: dict, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, seed: int = 0, dropout: bool = False,
               unroll: int = 1) -> tuple[TrainState, dict]:
    """One optimiser update from `grad_accum` micro-batches.

    Args:
        state: the TrainState (donated by the caller's jit).
        batch: a tuple of arrays, each (grad_accum, micro_batch, ...).
        frozen: the weights that do not train ({} if all do).
        loss_fn: (trainable, frozen, micro-batch, rng | None) -> (summed objective, sums with "count").
        dropout: whether the loss function gets a dropout key (one per step and micro-batch).
        unroll: micro-batches per pass of the accumulation loop (`lax.scan`'s unroll). Their gradients are
            independent, so XLA may compute them at the same time (on a CPU, small micro-batches run two
            at once; benchmarks/RESULTS.md).
    Returns:
        The new state and on-device metrics: every sum of the loss function as a mean over the whole batch
        (so "loss"), grad_norm (before clipping) and skipped (updates skipped so far). The gradient is the
        summed objective's over all micro-batches divided by their total count: exactly one big batch's.
        An update whose loss or gradient is not finite is not applied (the weights and optimizer state stay
        as they were) and is counted instead.
    """
    step_key = jax.random.fold_in(jax.random.key(seed), state.step)  # same step -> same dropout masks
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(i, piece):
        (_, sums), grads = grad_fn(state.params, frozen, piece, jax.random.fold_in(step_key, i) if dropout else None)
        return sums, grads

    n = batch[0].shape[0]
    if n == 1:  # no accumulation: no zero-filled sums, no scan
        sums, grads = micro(0, tuple(b[0] for b in batch))
    else:
        def accumulate(carry, inputs):
            sums, grads = micro(inputs[0], inputs[1])
            return jax.tree.map(jnp.add, carry, (sums, grads)), None

        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                             jax.eval_shape(micro, 0, tuple(b[0] for b in batch)))
        (sums, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(n), batch), unroll=unroll)
    count = jnp.maximum(sums["count"], 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: (g / count).astype(g.dtype), grads)
    metrics = means(sums)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

    def update(params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # A conditional rather than a select between old and new: the update then happens in place, with no copy
    # of the optimizer state kept for the case where it must be thrown away.
    params, opt_state = jax.lax.cond(ok, update, lambda p, o: (p, o), state.params, state.opt_state)
    step = state.step + 1
    skipped = state.skipped + (~ok).astype(jnp.int32)
    first = jnp.where((state.first_skipped == 0) & ~ok, step, state.first_skipped)
    state = TrainState(step=step, params=params, opt_state=opt_state, skipped=skipped, first_skipped=first)
    return state, {**metrics, "grad_norm": grad_norm, "skipped": skipped, "first_skipped": first}


def eval_step(params, batch: tuple, frozen: dict, *, loss_fn: LossFn) -> dict:
    """The loss function's sums on one batch (arrays (B, ...)), dropout off; add them up over batches and
    divide by "count" (`means`) for the evaluation's means."""
    return loss_fn(params, frozen, batch, None)[1]
