"""The objectives the engine differentiates: a model and a batch layout -> a loss function.

`language_model`, `classifier` and `preference` turn a model into `loss_fn(trainable, frozen, batch, rng)
-> (objective, sums)`. The objective is a *sum* over the batch's examples or tokens, and `sums` holds that
sum as "loss", the number it is averaged over as "count", and any other metric as a sum: the engine divides
by the total count, so accumulated micro-batches give exactly one big batch's gradient, padding and ignored
targets included. The numerics they call live in losses.py, read through the module at call time.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgpt.model import losses, parts
from jaxgpt.model.gpt import GPT, GPTClassifier

LossFn = Callable[[dict, dict, tuple, "jax.Array | None"], tuple[jax.Array, dict]]


def _features(model, lora, trainable, frozen, tokens, rng):
    """(h (B, T, C), head (V, C)) of the language model, with adapters if any and dropout when rng is set."""
    return parts.apply(model, lora, trainable, frozen, tokens, deterministic=rng is None,
                       rngs=None if rng is None else {"dropout": rng}, method=GPT.features)


def language_model(model: GPT, lora=None) -> LossFn:
    """Next-token cross-entropy through the fused head. Batch: (inputs, targets), each (B, T), targets
    IGNORE_INDEX where nothing is learned; or (windows,) of (B, T + 1), whose inputs are [:-1] and
    targets [1:] (pretraining reads each window once)."""
    def loss_fn(trainable, frozen, batch, rng):
        x, y = (batch[0][:, :-1], batch[0][:, 1:]) if len(batch) == 1 else batch  # (B, T) each
        h, head = _features(model, lora, trainable, frozen, x, rng)  # (B, T, C), (V, C)
        B, T, C = h.shape
        total = losses.head_loss(h.reshape(B * T, C), head, y.reshape(B * T), model.config.dtype,
                                 losses.HEAD_CHUNK_TOKENS)
        return total, {"loss": total, "count": jnp.sum(y != losses.IGNORE_INDEX)}
    return loss_fn


def mean_loss(model: GPT, params, x, y) -> jax.Array:
    """Mean next-token cross-entropy of `params` on inputs x and targets y (B, T): `language_model`'s
    objective over its count (differentiable, no dropout)."""
    total, sums = language_model(model)(params, {}, (x, y), None)
    return total / jnp.maximum(sums["count"], 1)


def classifier(model: GPTClassifier, lora=None) -> LossFn:
    """Cross-entropy of the class read at each example's last real token. Batch: (tokens (B, T),
    lengths (B,), labels (B,), weights (B,))."""
    def loss_fn(trainable, frozen, batch, rng):
        tokens, lengths, labels, weights = batch
        logits = parts.apply(model, lora, trainable, frozen, tokens, lengths, deterministic=rng is None,
                             rngs=None if rng is None else {"dropout": rng})  # (B, n_classes)
        return losses.classification_loss(logits, labels, weights)
    return loss_fn


def sequence_logprobs(model: GPT, lora, trainable, frozen, tokens, targets, rng=None) -> jax.Array:
    """Summed log-probability of each row's targets (IGNORE_INDEX excluded): tokens, targets (B, T) -> (B,)."""
    h, head = _features(model, lora, trainable, frozen, tokens, rng)  # (B, T, C), (V, C)
    B, T, C = h.shape
    logp = losses.token_logprobs(h.reshape(B * T, C), head, targets.reshape(B * T), model.config.dtype)  # (B * T,)
    return logp.reshape(B, T).sum(-1)


def preference(model: GPT, beta: float, lora=None) -> LossFn:
    """DPO against reference log-probabilities computed beforehand (the starting model's). Batch: (tokens
    (B, 2, T) chosen then rejected, targets (B, 2, T), reference log-probs (B, 2), weights (B,))."""
    def loss_fn(trainable, frozen, batch, rng):
        tokens, targets, ref, weights = batch
        B, _, T = tokens.shape
        logp = sequence_logprobs(model, lora, trainable, frozen, tokens.reshape(2 * B, T),
                                 targets.reshape(2 * B, T), rng).reshape(B, 2)  # (B, 2): chosen, rejected
        per_pair, chosen_reward, rejected_reward = losses.dpo_loss(logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1], beta)
        total = jnp.sum(per_pair * weights)
        margin = chosen_reward - rejected_reward
        return total, {"loss": total, "count": jnp.sum(weights),
                       "reward_accuracy": jnp.sum((margin > 0) * weights), "reward_margin": jnp.sum(margin * weights),
                       "chosen_logp": jnp.sum(logp[:, 0] * weights), "rejected_logp": jnp.sum(logp[:, 1] * weights)}
    return loss_fn
