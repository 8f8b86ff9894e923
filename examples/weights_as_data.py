"""Weights as data: two finetunes of one model interpolated (the loss along the line, all points in one
vmapped program), their average, and LoRA adapters merged into the kernels.

    python examples/weights_as_data.py --steps 30

Parameters are a plain pytree, so "a model halfway between two" is `jax.tree.map(lambda a, b: ..., A, B)`
and a sweep over the line is one `jax.vmap` over the mixing coefficient.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import setup, windows

from jaxgpt.model import lora
from jaxgpt.model.objectives import mean_loss


def finetune(model, params, data, steps: int, lr: float = 1.0):
    """`steps` plain gradient steps on windows of `data` (a few SGD steps stand in for a real finetune)."""
    T = model.config.block_size
    grad = jax.jit(jax.grad(lambda p, w: mean_loss(model, p, w[:, :-1], w[:, 1:])))
    for s in range(steps):
        w = jnp.asarray(windows(data, 16, T + 1, seed=s))
        params = jax.tree.map(lambda p, g: p - lr * g, params, grad(params, w))
    return params


def mix(a, b, t):
    """(1 - t) * a + t * b, leaf by leaf."""
    return jax.tree.map(lambda x, y: (1 - t) * x + t * y, a, b)


def loss_along_line(model, a, b, val, ts) -> jax.Array:
    """The validation loss of mix(a, b, t) for every t of `ts`, in one vmapped program."""
    def loss(t):
        return mean_loss(model, mix(a, b, t), val[:, :-1], val[:, 1:])
    return jax.jit(jax.vmap(loss))(ts)


def main(steps: int = 30) -> dict:
    model, base, tok, ids = setup()
    T, half = model.config.block_size, len(ids) // 2
    a = finetune(model, base, ids[:half], steps)  # the first half of the corpus ...
    b = finetune(model, base, ids[half:], steps)  # ... and the second
    val = jnp.asarray(windows(ids, 32, T + 1, seed=99))
    ts = jnp.linspace(0.0, 1.0, 11)
    line = loss_along_line(model, a, b, val, ts)
    for t, loss in zip(ts.tolist(), line.tolist()):
        print(f"t = {t:.1f}: validation loss {loss:.4f}")
    average = mix(a, b, 0.5)  # averaging two checkpoints is the midpoint

    # LoRA: adapters are their own pytree; merged, they are ordinary kernels and the model is a plain GPT.
    cfg = lora.LoraConfig(rank=4, alpha=8.0)
    adapters = lora.init_adapters(base, cfg, jax.random.key(1))
    adapters = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(2), x.shape), adapters)
    x = jnp.asarray(windows(ids, 2, T, seed=5))
    with_adapters = lora.apply(model, base, adapters, cfg, x)
    merged = model.apply({"params": lora.merge(base, adapters, cfg)}, x)
    print(f"LoRA applied vs merged: largest logit difference {float(jnp.abs(with_adapters - merged).max()):.2e}")
    return {"a": a, "b": b, "val": val, "ts": ts, "line": line, "average": average,
            "lora": (with_adapters, merged)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="gradient steps of each finetune")
    main(parser.parse_args().steps)
