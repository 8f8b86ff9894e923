"""Rotary position embeddings (RoPE), and the ways of stretching them past the context a model trained at.

A head's D dimensions are D/2 pairs; pair i of the query or key at position p is turned by the angle
p * inv_freq[i], with inv_freq[i] = theta^(-2i/D). The pairs are (x[i], x[i + D/2]) — the halves layout of
Hugging Face's Llama and Qwen3, not GPT-NeoX's interleaved one — so converted weights need no permutation.
A query-key product then depends on the two positions only through their difference.

Scaling (`ModelConfig.rope_scaling`) changes inv_freq, never the weights:
- "linear" divides every frequency by `rope_factor` (position interpolation: position p reads as p / factor);
- "llama3" (Llama 3.1 and later) divides only the low frequencies, whose wavelength exceeds
  rope_context / low_freq_factor, keeps the high ones (wavelength below rope_context / high_freq_factor), and
  blends linearly between.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """(D/2,) float64 angles per position, one per pair of dimensions, after `config.rope_scaling`."""
    D = config.head_dim
    inv = 1.0 / config.rope_theta ** (np.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
    if config.rope_scaling == "linear":
        return inv / config.rope_factor
    if config.rope_scaling == "llama3":
        context = config.rope_context or config.block_size
        long_wave = context / config.rope_low_freq_factor  # longer wavelengths: divided by the factor
        short_wave = context / config.rope_high_freq_factor  # shorter ones: kept as they are
        wavelength = 2 * math.pi / inv
        blend = (context / wavelength - config.rope_low_freq_factor) / (
            config.rope_high_freq_factor - config.rope_low_freq_factor)  # 0 at long_wave, 1 at short_wave
        blended = (1 - blend) * inv / config.rope_factor + blend * inv
        return np.where(wavelength > long_wave, inv / config.rope_factor,
                        np.where(wavelength < short_wave, inv, blended))
    return inv


def rotate(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """x (B, T, H, D) turned to `positions` (T,) or (B, T) (ints, possibly traced) -> (B, T, H, D) in x's dtype.

    The angles are float32 products of the position and the frequency, as in Hugging Face's models."""
    freq = jnp.asarray(inv_freq, jnp.float32).reshape((1,) * positions.ndim + (-1,))  # (1, D/2) or (1, 1, D/2)
    angles = positions.astype(jnp.float32)[..., None] * freq  # (T, D/2) or (B, T, D/2)
    angles = angles if angles.ndim == 3 else angles[None]  # (1 | B, T, D/2)
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]  # (1 | B, T, 1, D/2)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # (B, T, H, D/2) each
    turned = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)  # (B, T, H, D)
    return turned.astype(x.dtype)
