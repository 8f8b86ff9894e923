"""What a run reports while it trains: the progress line, throughput and an MFU estimate.

MFU (model FLOPs utilisation) compares the FLOPs the model needs per second with the device's peak. The
peak comes from a table of known accelerators; on a CPU, which has no published figure, it is measured
once with a large float32 matmul.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp

from jaxgpt.config import ModelConfig

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
_PEAKS = {
    "h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12, "a10": 125e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v6": 918e12,
}


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 per weight (forward and backward) plus attention over the context."""
    lookups = (cfg.block_size if cfg.position == "learned" else 0) + (0 if cfg.tie_embeddings else cfg.vocab_size)
    n_matmul = n_params - lookups * cfg.n_embd  # position and (untied) token embeddings do no multiply-adds
    return 6 * n_matmul + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size


@functools.cache
def peak_flops() -> float | None:
    """Peak FLOP/s of all local devices together, or None when the device is unknown."""
    device = jax.local_devices()[0]
    kind = device.device_kind.lower()
    if device.platform == "cpu":
        n = 1024
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda a: a @ a)
        f(a).block_until_ready()
        t0, reps = time.perf_counter(), 10
        for _ in range(reps):
            f(a).block_until_ready()
        return 2 * n**3 * reps / (time.perf_counter() - t0)  # the CPU devices share one host
    for name, peak in _PEAKS.items():
        if name in kind:
            return peak * jax.local_device_count()
    return None


def format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


class Progress:
    """One status line, redrawn in place on a terminal and printed as plain lines elsewhere."""

    def __init__(self, total_steps: int, enabled: bool = True, quiet: bool = False):
        self.total = total_steps
        self.quiet = quiet  # prints nothing: a process other than 0 of a multi-process run
        self.tty = enabled and sys.stdout.isatty()
        self.start = time.perf_counter()
        self.width = 0

    def update(self, step: int, text: str, first_step: int) -> None:
        if self.quiet:
            return
        done = step / max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(step - first_step, 1) * (self.total - step)
        bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
        line = f"step {step:>6}/{self.total} [{bar}] {text} | eta {eta / 60:.1f} min"
        if self.tty:
            sys.stdout.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def print(self, text: str) -> None:
        """A message on its own line, without breaking the progress line."""
        if self.quiet:
            return
        if self.tty and self.width:
            sys.stdout.write("\r" + " " * self.width + "\r")
            self.width = 0
        print(text, flush=True)


def progress_line(text: str, done: bool = False) -> None:
    """A progress bar's line on a terminal's stderr (redrawn in place); nothing when it is not a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write("\r" + text + ("\n" if done else ""))
        sys.stderr.flush()
