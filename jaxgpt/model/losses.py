"""The loss numerics: every loss jaxgpt trains with, on arrays (hidden states, head, targets).

The numerics: the readable reference `cross_entropy`; the fused, chunked output head + cross-entropy
(`head_loss`), which never holds the (tokens, vocab) logits and is tested equal to the reference; per-token
log-probabilities of the same chunked head (`token_logprobs`, for DPO and evaluation); the classification
loss; the DPO loss.
The objectives that bind a model to these live in objectives.py; nothing here knows the model.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100  # targets with this value (padding) take no part in the loss, as in PyTorch
HEAD_CHUNK_TOKENS = 1024  # logits of at most this many tokens exist at once in the fused losses


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


def _logits(h, head, dtype):
    """GPT.logits' own projection (a product in the compute dtype, then float32): h (n, C), head (V, C)."""
    return jnp.einsum("nc,vc->nv", h.astype(dtype), head.astype(dtype)).astype(jnp.float32)  # (n, V)


def whole_head(head, dtype=None):
    """The (V, C) head as the chunk loops read it: whole along its embedding axis (a head still split by FSDP
    would be gathered again in every chunk), cast to `dtype` first so that the one gather moves that."""
    return nn.with_logical_constraint(head if dtype is None else head.astype(dtype), ("vocab", None))


def _chunk_loss(h, targets, head, dtype):
    """Summed loss of one chunk, h: (n, C), targets: (n,), and the gradient of that sum w.r.t. its logits.

    One exponential per logit serves both the log-sum-exp and the softmax: on a CPU the exponentials cost
    more than the memory passes.
    """
    logits = _logits(h, head, dtype)  # (n, V)
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
def head_loss(h, head, targets, dtype: str, chunk_tokens: int) -> jax.Array:
    """Summed cross-entropy of the output head, chunk by chunk, never holding all (N, V) logits.

    Args:
        h: (N, C) final hidden states; head: (V, C) output weight (GPT.head_weight); targets: (N,) ids or
            IGNORE_INDEX.
        dtype: compute dtype of the projection; chunk_tokens: most tokens whose logits exist at once.
    """
    hs, ts = _split(h, targets, chunk_tokens)
    head = whole_head(head, jnp.dtype(dtype))
    return jnp.sum(jax.lax.map(lambda a: _chunk_loss(a[0], a[1], head, jnp.dtype(dtype))[0], (hs, ts)))


def _head_loss_fwd(h, head, targets, dtype, chunk_tokens):
    # The loss is a sum, so its gradient for a cotangent g is g times the gradient of the sum: compute that
    # here, chunk by chunk while each chunk's logits exist, and keep no logits for the backward pass.
    hs, ts = _split(h, targets, chunk_tokens)
    dt = jnp.dtype(dtype)
    head_c = whole_head(head, dt)  # (V, C); the gradient is still summed in float32 for `head` itself

    def chunk(dhead, inputs):
        hc, tc = inputs  # (n, C), (n,)
        loss, dlogits = _chunk_loss(hc, tc, head_c, dt)  # (), (n, V)
        dh = jnp.einsum("nv,vc->nc", dlogits, head_c).astype(h.dtype)  # (n, C)
        dhead = dhead + jnp.einsum("nv,nc->vc", dlogits, hc.astype(dt)).astype(jnp.float32)  # (V, C), f32 sum
        return dhead, (loss, dh)

    if hs.shape[0] == 1:  # one chunk: no loop, no accumulator
        dhead, (loss, dh) = chunk(jnp.zeros(head.shape, jnp.float32), (hs[0], ts[0]))
        loss, dh = loss[None], dh[None]
    else:
        dhead, (loss, dh) = jax.lax.scan(chunk, jnp.zeros(head.shape, jnp.float32), (hs, ts))  # dh: (k, n, C)
    return jnp.sum(loss), (dh.transpose(1, 0, 2).reshape(h.shape), dhead.astype(head.dtype))  # dh: (N, C)


def _head_loss_bwd(dtype, chunk_tokens, res, g):
    dh, dhead = res
    # The loss (and so g) is float32; the cotangents take their primals' dtypes (16-bit weights included).
    return (g * dh).astype(dh.dtype), (g * dhead).astype(dhead.dtype), None  # integer targets: no cotangent


head_loss.defvjp(_head_loss_fwd, _head_loss_bwd)


def token_logprobs(h, head, targets, dtype: str, chunk_tokens: int = HEAD_CHUNK_TOKENS) -> jax.Array:
    """log p(target) of every token (0 where the target is IGNORE_INDEX), chunk by chunk.

    Unlike `head_loss` the result is per token, so any function of it can be differentiated (DPO takes a
    sigmoid of per-sequence sums); each chunk's logits are recomputed in the backward pass instead of kept.

    Args:
        h: (N, C) hidden states; head: (V, C); targets: (N,). Returns: (N,) float32.
    """
    hs, ts = _split(h, targets, chunk_tokens)  # (k, n, C), (k, n)
    head = whole_head(head)  # as stored: its gradient, summed over the chunks, keeps the weights' dtype

    @jax.checkpoint
    def chunk(inputs):
        hc, tc = inputs
        logits = _logits(hc, head, jnp.dtype(dtype))  # (n, V)
        valid = tc != IGNORE_INDEX
        picked = jnp.take_along_axis(logits, jnp.where(valid, tc, 0)[:, None], axis=-1)[:, 0]  # (n,)
        return jnp.where(valid, picked - jax.nn.logsumexp(logits, axis=-1), 0.0)

    out = jax.lax.map(chunk, (hs, ts))  # (k, n): out[j, i] is token i * k + j
    return out.T.reshape(h.shape[0])  # (N,) in token order


def classification_loss(logits, labels, weights) -> tuple[jax.Array, dict]:
    """Summed cross-entropy of (B, n_classes) logits against (B,) labels, each example weighted (0 for the
    rows that only fill a short batch); sums of loss, correct predictions and weights ("count")."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # (B,)
    total = jnp.sum(losses * weights)
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) * weights)
    return total, {"loss": total, "accuracy": correct, "count": jnp.sum(weights)}


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float):
    """Direct Preference Optimization (Rafailov et al., 2023), per pair.

    Args: the policy's and the reference model's summed log-probabilities of each pair's chosen and
        rejected response, all (B,); beta, the strength of the pull towards the reference.
    Returns: (losses, chosen rewards, rejected rewards), each (B,); a reward is beta * (policy - reference).
    """
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    return -jax.nn.log_sigmoid(chosen_reward - rejected_reward), chosen_reward, rejected_reward


# --- objectives: a model and a batch layout -> the engine's loss function ---------------------------------


