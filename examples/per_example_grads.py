"""Per-example gradients with `vmap(grad)`, and the training windows that most influence one validation
window (the dot product of their gradients: a first-order estimate of how a step on one moves the other).

    python examples/per_example_grads.py                         # a small random char GPT
    python examples/per_example_grads.py --model out/shakespeare_char

In PyTorch this takes a loop of backward passes or a second library; here it is `jax.vmap(jax.grad(f))`.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import setup, windows

from jaxgpt.model.objectives import mean_loss


def per_example_grads(model, params, batch: jax.Array):
    """The gradient of each window's mean next-token loss: batch (N, T + 1) -> a params tree of (N, ...)."""
    def loss(p, window):  # window (T + 1,): inputs window[:-1], targets window[1:]
        return mean_loss(model, p, window[None, :-1], window[None, 1:])

    return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, batch)


def influence(model, params, train: jax.Array, val: jax.Array) -> jax.Array:
    """(N,) dot products of each training window's gradient with the validation window's (val: (T + 1,))."""
    g_train = per_example_grads(model, params, train)  # each leaf (N, ...)
    g_val = jax.tree.map(lambda g: g[0], per_example_grads(model, params, val[None]))
    dots = jax.tree.map(lambda a, b: jnp.tensordot(a, b, axes=b.ndim), g_train, g_val)  # each leaf (N,)
    return sum(jax.tree.leaves(dots))


def main(model_dir: str = "", n: int = 64, top: int = 3) -> dict:
    model, params, tok, ids = setup(model_dir)
    T = model.config.block_size
    train, val = jnp.asarray(windows(ids, n, T + 1, seed=0)), jnp.asarray(windows(ids, 1, T + 1, seed=1)[0])
    scores = influence(model, params, train, val)
    order = jnp.argsort(-scores)
    print(f"validation window: {tok.decode(val.tolist())!r}")
    for i in order[:top].tolist():
        print(f"  helps most ({float(scores[i]):+.3e}): {tok.decode(train[i].tolist())!r}")
    for i in order[-top:].tolist():
        print(f"  helps least ({float(scores[i]):+.3e}): {tok.decode(train[i].tolist())!r}")
    return {"scores": scores, "order": order}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="a model directory (default: a small random char GPT)")
    parser.add_argument("--n", type=int, default=64, help="training windows to score")
    args = parser.parse_args()
    main(args.model, args.n)
