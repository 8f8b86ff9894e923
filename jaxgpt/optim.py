"""The Optax optimiser: AdamW with weight decay on matrices only, warmup then cosine decay, clipping."""

from __future__ import annotations

import jax
import optax

from jaxgpt.config import TrainConfig


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to learning_rate, then cosine decay to min_lr, then constant at min_lr."""
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
