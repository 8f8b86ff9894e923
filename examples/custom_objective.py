"""A custom objective on the engine, in a few lines: next-token cross-entropy with label smoothing and a
z-loss (the square of the log-partition function, which keeps the logits from drifting).

    python examples/custom_objective.py --out out/smoothed --steps 40

The loss function follows the engine's contract, `loss_fn(trainable, frozen, batch, rng) -> (objective,
sums)` with the objective a sum and `sums["count"]` what it is averaged over; everything else (the mesh
and shardings, accumulation, checkpoints, exact resume, metrics.jsonl) is the engine's, as for every
built-in task. Run it again with more --steps and it resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import setup, windows

from jaxgpt import Config, Engine, Task, TrainConfig
from jaxgpt.data.windows import get_batch


def smoothed(model, smoothing: float = 0.1, z_weight: float = 1e-4):
    """Label-smoothed cross-entropy plus a z-loss, summed over tokens. Batch: (windows (B, T + 1),)."""
    def loss_fn(trainable, frozen, batch, rng):
        x, y = batch[0][:, :-1], batch[0][:, 1:]  # (B, T) each
        logits = model.apply({"params": trainable}, x, deterministic=rng is None,
                             rngs=None if rng is None else {"dropout": rng})  # (B, T, V) float32
        logz = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
        logp = logits - logz[..., None]
        nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]  # (B, T)
        ce = (1 - smoothing) * nll - smoothing * logp.mean(-1)  # the smoothed target puts smoothing / V everywhere
        total = jnp.sum(ce + z_weight * logz**2)
        return total, {"loss": total, "count": jnp.asarray(y.size), "nll": jnp.sum(nll), "z": jnp.sum(logz)}
    return loss_fn


class Windows(Task):
    """Random windows of a token array: a batch per step from (seed, step) alone, so it resumes exactly."""

    name = "smoothed-lm"

    def __init__(self, ids: np.ndarray, cfg: Config, micro: int):
        self.ids, self.cfg, self.micro = ids, cfg, micro
        self.settings = {"smoothing": 0.1}
        split = int(0.9 * len(ids))
        self.train, self.val = ids[:split], ids[split:]

    def batch(self, step: int) -> tuple:
        tc, T = self.cfg.train, self.cfg.model.block_size
        x, y = get_batch(self.train, tc.batch_size, T, tc.seed, step)  # (B, T) each
        return (np.concatenate([x, y[:, -1:]], 1).reshape(tc.grad_accum, self.micro, T + 1),)

    def eval_sets(self) -> dict[str, list[tuple]]:
        return {"val": [(windows(self.val, self.micro, self.cfg.model.block_size + 1, seed=s),) for s in range(2)]}


def main(out: str = "out/smoothed", steps: int = 40) -> dict:
    model, _, tok, ids = setup()
    cfg = Config(model=model.config, train=TrainConfig(out_dir=out, batch_size=16, max_steps=steps, eval_interval=20,
                                                       log_interval=10, learning_rate=3e-3, warmup_steps=5))
    engine = Engine(cfg, model, smoothed(model))
    engine.run(Windows(ids, cfg, engine.micro_batch), out, tok.meta())
    print(f"last evaluation: {engine.last_eval}")
    return engine.last_eval


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/smoothed")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    main(args.out, args.steps)
