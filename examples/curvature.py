"""Curvature of the loss: Hessian-vector products (forward-over-reverse, `jax.jvp` of `jax.grad`) and the
top Hessian eigenvalue by power iteration, without ever forming the Hessian.

    python examples/curvature.py --iters 20

The largest eigenvalue bounds the learning rate plain gradient descent can take (about 2 / lambda_max);
tracking it during training shows "edge of stability" behaviour.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import setup, windows

from jaxgpt.model.objectives import mean_loss


def hvp(f, params, v):
    """H(params) @ v for a scalar function f of a pytree: the derivative of grad f along v."""
    return jax.jvp(jax.grad(f), (params,), (v,))[1]


def _dot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def top_eigenvalue(f, params, iters: int = 20, seed: int = 0, shift: float = 0.0) -> tuple[float, list[float]]:
    """The eigenvalue of largest magnitude of f's Hessian at params (power iteration on H - shift I), and
    its estimates. With `shift` the most negative eigenvalue, it finds the largest positive one."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    step = jax.jit(lambda p, v: jax.tree.map(lambda h, x: h - shift * x, hvp(f, p, v), v))
    estimates = []
    for _ in range(iters):
        v = jax.tree.map(lambda x: x / jnp.sqrt(_dot(v, v)), v)
        hv = step(params, v)
        estimates.append(float(_dot(v, hv)) + shift)  # the Rayleigh quotient of the unit vector
        v = hv
    return estimates[-1], estimates


def main(iters: int = 20) -> dict:
    model, params, _, ids = setup()
    T = model.config.block_size
    batch = jnp.asarray(windows(ids, 16, T + 1))

    def f(p):
        return mean_loss(model, p, batch[:, :-1], batch[:, 1:])

    value, estimates = top_eigenvalue(f, params, iters)
    print("power iteration: " + " ".join(f"{e:.3f}" for e in estimates))
    print(f"the Hessian's eigenvalue of largest magnitude: {value:.4f}")
    if value < 0:  # the curvature that limits the learning rate is the largest positive one
        top, _ = top_eigenvalue(f, params, iters, shift=value)
    else:
        top = value
    print(f"its largest positive eigenvalue: {top:.4f} (plain gradient descent diverges above a learning rate "
          f"of about {2 / top:.3f})")
    return {"eigenvalue": value, "estimates": estimates, "largest": top}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    main(parser.parse_args().iters)
