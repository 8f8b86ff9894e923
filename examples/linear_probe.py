"""A linear probe on frozen hidden states: does layer L's residual stream say, linearly, whether the
current character is a vowel (or any property you write as a function of the text)?

    python examples/linear_probe.py --model out/shakespeare_char --layer 1

The GPT stays frozen: its hidden states are computed once, and the probe, a logistic regression trained
with optax, learns on them alone.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import setup, windows
from inside import residuals


def features(model, params, tokens, layer: int) -> jax.Array:
    """Layer `layer`'s residual stream (B, T, C) flattened to (B * T, C)."""
    h = residuals(model, params, tokens)[layer]
    return h.reshape(-1, h.shape[-1])  # (B * T, C)


def train_probe(x: jax.Array, y: jax.Array, steps: int = 300, lr: float = 0.05):
    """A logistic regression (w (C,), b) on features x (N, C) and 0/1 labels y (N,)."""
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-6  # (1, C) each
    probe = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
    tx = optax.adam(lr)

    def loss(p):
        z = ((x - mean) / std) @ p["w"] + p["b"]
        return optax.sigmoid_binary_cross_entropy(z, y).mean()

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(probe)
    for _ in range(steps):
        probe, state = step(probe, state)
    return lambda x: (((x - mean) / std) @ probe["w"] + probe["b"]) > 0


def main(model_dir: str = "", layer: int = -1, n: int = 256) -> dict:
    model, params, tok, ids = setup(model_dir)
    T, layer = model.config.block_size, layer % model.config.n_layer
    vowels = np.array([tok.decode([i])[-1:] in tuple("aeiouAEIOU") for i in range(tok.vocab_size)])  # by token id
    train, test = jnp.asarray(windows(ids, n, T, seed=0)), jnp.asarray(windows(ids, n // 4, T, seed=1))
    predict = train_probe(features(model, params, train, layer), jnp.asarray(vowels[np.asarray(train).ravel()], jnp.float32))
    truth = vowels[np.asarray(test).ravel()]
    accuracy = float(np.mean(np.asarray(predict(features(model, params, test, layer))) == truth))
    baseline = float(max(truth.mean(), 1 - truth.mean()))
    print(f"layer {layer}: the probe tells a vowel with accuracy {accuracy:.3f} (always the majority: {baseline:.3f})")
    return {"accuracy": accuracy, "baseline": baseline}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="a model directory (default: a small random char GPT)")
    parser.add_argument("--layer", type=int, default=-1, help="which block's output (default the last)")
    args = parser.parse_args()
    main(args.model, args.layer)
