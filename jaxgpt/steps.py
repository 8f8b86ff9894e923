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


def _split(h, targets, chunk_tokens: int):
    """Cut N tokens into k equal chunks of at most chunk_tokens (the fewest such k that divides N).

    Chunk j holds tokens j, j + k, j + 2k, ...: strided rather than contiguous, so a batch sharded over
    devices stays sharded the same way inside every chunk. Returns h (k, n, C) and targets (k, n).
    """
    N, C = h.shape
    k = next(k for k in range(max(1, -(-N // chunk_tokens)), N + 1) if N % k == 0)
    return h.reshape(N // k, k, C).transpose(1, 0, 2), targets.reshape(N // k, k).T


def _chunk_loss(h, targets, wte, dtype):
    """Summed loss of one chunk, h: (n, C), targets: (n,), and the gradient of that sum w.r.t. its logits.

    The logits are GPT.logits' own (a product in the compute dtype, then float32). One exponential per logit
    serves both the log-sum-exp and the softmax: on a CPU the exponentials cost more than the memory passes.
    """
    logits = jnp.einsum("nc,vc->nv", h.astype(dtype), wte.astype(dtype)).astype(jnp.float32)  # (n, V)
    valid = targets != IGNORE_INDEX
    top = jnp.max(logits, axis=-1, keepdims=True)  # (n, 1)
    e = jnp.exp(logits - top)  # (n, V)
    total = jnp.sum(e, axis=-1, keepdims=True)  # (n, 1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[:, None], axis=-1)  # (n, 1) target logit
    loss = jnp.sum(jnp.where(valid[:, None], top + jnp.log(total) - picked, 0.0))
    hit = jnp.arange(logits.shape[1])[None, :] == targets[:, None]  # (n, V) one-hot of the targets
    dlogits = jnp.where(valid[:, None], e / total - hit, 0.0)  # (n, V) softmax minus one-hot
    return loss, dlogits.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def head_loss(h, wte, targets, dtype: str, chunk_tokens: int) -> jax.Array:
    """Summed cross-entropy of the tied output head, chunk by chunk, never holding all (N, V) logits.

    Args:
        h: (N, C) final hidden states; wte: (V, C) token embedding; targets: (N,) ids or IGNORE_INDEX.
        dtype: compute dtype of the projection; chunk_tokens: most tokens whose logits exist at once.
    """
    hs, ts = _split(h, targets, chunk_tokens)
    return jnp.sum(jax.lax.map(lambda a: _chunk_loss(a[0], a[1], wte, jnp.dtype(dtype))[0], (hs, ts)))


def _head_loss_fwd(h, wte, targets, dtype, chunk_tokens):
    # The loss is a sum, so its gradient for a cotangent g is g times the gradient of the sum: compute that
    # here, chunk by chunk while each chunk's logits exist, and keep no logits for the backward pass.
    hs, ts = _split(h, targets, chunk_tokens)
    dt = jnp.dtype(dtype)

    def chunk(dwte, inputs):
        hc, tc = inputs  # (n, C), (n,)
        loss, dlogits = _chunk_loss(hc, tc, wte, dt)  # (), (n, V)
        dh = jnp.einsum("nv,vc->nc", dlogits, wte.astype(dt)).astype(h.dtype)  # (n, C)
        dwte = dwte + jnp.einsum("nv,nc->vc", dlogits, hc.astype(dt)).astype(jnp.float32)  # (V, C), summed in f32
        return dwte, (loss, dh)

    if hs.shape[0] == 1:  # one chunk: no loop, no accumulator
        dwte, (loss, dh) = chunk(jnp.zeros(wte.shape, jnp.float32), (hs[0], ts[0]))
        loss, dh = loss[None], dh[None]
    else:
        dwte, (loss, dh) = jax.lax.scan(chunk, jnp.zeros(wte.shape, jnp.float32), (hs, ts))  # dh: (k, n, C)
    return jnp.sum(loss), (dh.transpose(1, 0, 2).reshape(h.shape), dwte.astype(wte.dtype))  # dh back to (N, C)


def _head_loss_bwd(dtype, chunk_tokens, res, g):
    dh, dwte = res
    # The loss (and so g) is float32; the cotangents take their primals' dtypes (16-bit weights included).
    return (g * dh).astype(dh.dtype), (g * dwte).astype(dwte.dtype), None  # targets are integers: no cotangent


head_loss.defvjp(_head_loss_fwd, _head_loss_bwd)

HEAD_CHUNK_TOKENS = 1024  # logits of at most this many tokens exist at once in the loss


def loss_fn(params, model: GPT, x: jax.Array, y: jax.Array, dropout_key=None) -> jax.Array:
    """Mean cross-entropy of the model on one batch x, y: (B, T).

    Equal to `cross_entropy(model.apply(...), y)` divided by the count, but the output head and the loss run
    fused, chunk by chunk (`head_loss`): the (B, T, vocab) logits are never materialised.
    """
    deterministic = dropout_key is None
    rngs = None if deterministic else {"dropout": dropout_key}
    h, _ = model.apply({"params": params}, x, deterministic=deterministic, rngs=rngs,
                       method=GPT.hidden_states)  # (B, T, C)
    B, T, C = h.shape
    total = head_loss(h.reshape(B * T, C), params["wte"]["embedding"], y.reshape(B * T),  # (B*T, C), (B*T,)
                      model.config.dtype, HEAD_CHUNK_TOKENS)
    return total / jnp.maximum(jnp.sum(y != IGNORE_INDEX), 1)


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

    def micro(i, xb, yb):
        return grad_fn(state.params, model, xb, yb, jax.random.fold_in(step_key, i) if use_dropout else None)

    n = x.shape[0]
    if n == 1:  # no accumulation: no zero-filled sums, no scan, no division
        loss, grads = micro(0, x[0], y[0])
    else:
        def accumulate(carry, inputs):
            loss, grads = micro(*inputs)
            return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grads)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros(()), zeros), (jnp.arange(n), x, y))
        loss, grads = loss / n, jax.tree.map(lambda g: g / n, grads)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

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
    return state, {"loss": loss, "grad_norm": grad_norm, "skipped": skipped, "first_skipped": first}


def eval_step(params, batch: tuple[jax.Array, jax.Array], *, model: GPT) -> dict:
    """Mean loss on one (x, y) batch of shape (B, T), dropout off."""
    x, y = batch
    return {"loss": loss_fn(params, model, x, y)}
