"""The Optax optimiser: AdamW with weight decay on matrices only (or Muon for the blocks' matrices), warmup
then cosine decay (or a constant rate), clipping. It is built for whatever tree trains: all weights, or a
finetune's trainable part."""

from __future__ import annotations

import jax
import optax
from flax import traverse_util

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


def muon_matrices(params):
    """Which weights Muon orthogonalises: the Dense kernels (in, out) inside the blocks; None for the rest
    (embeddings, an untied head, norms, biases, a classifier's head, LoRA adapters), which AdamW updates."""
    def spec(path, p):
        matrix = any(part.startswith("h_") for part in path) and "lora" not in path and path[-1] == "kernel"
        return optax.contrib.MuonDimensionNumbers(0, 1) if matrix and p.ndim == 2 else None  # (in, out)

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: spec(path, p) for path, p in flat.items()})


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Gradient clipping (when grad_clip > 0) followed by AdamW on the schedule; or, with
    optimizer="muon", Muon on the blocks' matrices and AdamW on the rest, both on the same schedule and
    weight decay (Muon's updates scaled to AdamW's typical size, `consistent_rms`, so one learning rate
    serves both)."""
    if cfg.optimizer == "muon":
        update = optax.contrib.muon(
            lr_schedule(cfg), weight_decay=cfg.weight_decay, weight_decay_mask=decay_mask, adam_b1=cfg.beta1,
            adam_b2=cfg.beta2, adam_weight_decay=cfg.weight_decay, muon_weight_dimension_numbers=muon_matrices,
            consistent_rms=0.2)
    else:
        update = optax.adamw(
            lr_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay, mask=decay_mask
        )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), update)
    return update
