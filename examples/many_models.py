"""Many models at once: one jitted train step `vmap`ped over seeds, N small GPTs trained in one program,
and its time against N separate runs of the same step.

    python examples/many_models.py --n 8 --steps 30

Each model has its own initialisation (seed) and learning rate; they read the same batches. The vmapped
program computes exactly what the N separate runs compute (the test checks it to float tolerance).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from common import setup, windows

from jaxgpt import TrainConfig, TrainState, init_params, language_model, train_step
from jaxgpt.train.optim import make_optimizer


def scaled(tx, lr):
    """The optimizer at learning rate 1, its update then multiplied by `lr` (which may be traced, so each
    vmapped model can have its own)."""
    return optax.chain(tx, optax.scale(lr))


def init_states(model, seeds, tx):
    return [TrainState.create(init_params(model.config, jax.random.key(s)), tx) for s in seeds]


def main(n: int = 8, steps: int = 30, batch: int = 8, model_dir: str = "") -> dict:
    model, _, _, ids = setup(model_dir)
    T = model.config.block_size
    lrs = jnp.geomspace(3e-4, 3e-2, n)  # one learning rate per model
    tx = make_optimizer(TrainConfig(learning_rate=1.0, warmup_steps=0, lr_schedule="constant"))
    batches = [jnp.asarray(windows(ids, batch, T + 1, seed=s))[None] for s in range(steps)]  # (1, B, T + 1)

    def one(state, b, lr):  # one model's step, as the engine runs it
        state, m = train_step(state, (b,), {}, loss_fn=language_model(model), tx=scaled(tx, lr))
        return state, m["loss"]

    many = jax.jit(jax.vmap(one, in_axes=(0, None, 0)))  # states and rates stacked on axis 0
    single = jax.jit(one)
    states = init_states(model, range(n), scaled(tx, 1.0))
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def run_many():
        s, losses = stacked, []
        for b in batches:
            s, loss = many(s, b, lrs)
            losses.append(loss)
        return s, jnp.stack(losses)  # (steps, n)

    def run_single():
        finals, losses = [], []
        for i, s in enumerate(states):
            row = []
            for b in batches:
                s, loss = single(s, b, lrs[i])
                row.append(loss)
            finals.append(s)
            losses.append(jnp.stack(row))
        return finals, jnp.stack(losses, 1)  # (steps, n)

    times = {}
    for name, fn in (("vmapped", run_many), ("separate", run_single)):
        jax.block_until_ready(fn())  # compile
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times[name] = time.perf_counter() - t0
        if name == "vmapped":
            many_state, many_losses = out
        else:
            single_states, single_losses = out
    speedup = times["separate"] / times["vmapped"]
    for i in range(n):
        print(f"model {i}: learning rate {float(lrs[i]):.1e}, loss {float(many_losses[0, i]):.3f} -> "
              f"{float(many_losses[-1, i]):.3f}")
    print(f"{n} models x {steps} steps: one vmapped program {times['vmapped']:.2f} s, {n} separate runs "
          f"{times['separate']:.2f} s ({speedup:.2f}x)")
    return {"many_state": many_state, "many_losses": many_losses, "single_states": single_states,
            "single_losses": single_losses, "speedup": speedup, "times": times}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="models")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    main(args.n, args.steps, args.batch)
