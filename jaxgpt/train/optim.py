"""The Optax optimiser: AdamW with weight decay on matrices only, warmup then cosine decay (or a constant
rate), clipping. It is built for whatever tree trains: all weights, or a finetune's trainable part."""

from __future__ import annotations

import jax
import optax

from jaxgpt.config import TrainConfig


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to learning_rate, then cosine decay to min_lr and constant at min_lr; or, with
    lr_schedule="constant", constant at learning_rate after the warmup."""
    if cfg.lr_schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1)),
                                     optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])
    decay = (cfg.decay_steps or cfg.max_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(decay, cfg.warmup_steps + 1), end_value=cfg.min_lr,
    )


def decay_mask(params):
    """True for weight matrices and embeddings; biases and LayerNorm parameters are not decayed."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Gradient clipping (when grad_clip > 0) followed by AdamW on the schedule."""
    adamw = optax.adamw(
        lr_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay, mask=decay_mask
    )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw
