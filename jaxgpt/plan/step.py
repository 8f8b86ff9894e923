"""Compile the engine's own train step for a target, and measure what it needs there.

`Job` is what would run: a resolved recipe (`Config`), the task (pretraining, or a finetune: instruct,
classify, dpo) and which weights train. `compile_step(job, target, micro)` builds the training engine
(`jaxgpt.train.engine.Engine`) over the target's devices, exactly as `train.py` or a finetune would there (the mesh
from the recipe's `mesh` section, the weights' shardings, donation, the attention kernel chosen for that
backend, remat), lowers its jitted `train_step` for abstract inputs and compiles it. Nothing is allocated.

`largest_micro_batch` searches the micro-batch that still fits, by bisection over multiples of the batch
parallelism (data x fsdp), each candidate compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.config import Config
from jaxgpt.model import gpt, objectives
from jaxgpt.model.attention import cudnn_compiles
from jaxgpt.model.gpt import GPT, GPTClassifier
from jaxgpt.model.parts import Parts
from jaxgpt.plan import hlo
from jaxgpt.plan import targets as targets_lib
from jaxgpt.plan.targets import Target
from jaxgpt.train import sharding
from jaxgpt.train.engine import Engine

TASKS = ("pretrain", "instruct", "classify", "dpo")
GPU_POOL = 0.75  # JAX preallocates this fraction of a GPU's memory and allocates from it (XLA_PYTHON_CLIENT_MEM_FRACTION)
SEARCH_LIMIT = 1 << 14  # the largest micro-batch per batch shard the search tries


@dataclasses.dataclass(frozen=True)
class Job:
    cfg: Config  # validated, its vocabulary and model shape resolved
    task: str = "pretrain"
    parts: Parts = Parts()
    n_classes: int = 2  # classify
    beta: float = 0.1  # dpo


@dataclasses.dataclass
class Fit:
    """What one compiled step needs on each device, in bytes."""

    micro: int
    params: int
    opt_state: int
    frozen: int
    batch: int
    temporaries: int
    total: int
    usable: int  # the memory the step may use there (after JAX's pool fraction and the margin)
    seconds: float  # compilation time
    attention: str = ""  # the model's resolved setting
    kernels: dict = dataclasses.field(default_factory=dict)
    collectives: dict = dataclasses.field(default_factory=dict)
    xla_flops: float | None = None  # XLA's own count, where the backend reports one
    refused: str = ""  # the compiler's own out-of-memory message, when it refused
    n_params: int = 0  # the whole model's
    n_trainable: int = 0
    mesh: dict = dataclasses.field(default_factory=dict)  # axis -> size

    @property
    def fits(self) -> bool:
        return not self.refused and self.total <= self.usable


def usable_memory(target: Target, fraction: float | None, margin: float) -> int:
    """The bytes a step may need on one device of `target` and still be said to fit."""
    pool = fraction if fraction is not None else (GPU_POOL if target.kind == "gpu" else 1.0)
    return int(target.memory * pool * (1 - margin))


def _shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of placed abstract arrays (the largest shard of each)."""
    return sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def _batch(job: Job, accum: int, micro: int) -> tuple:
    """The task's batch as abstract arrays of shape (grad_accum, micro_batch, ...): the layouts the loss
    functions document (jaxgpt.model.losses)."""
    T, i32, f32 = job.cfg.model.block_size, jnp.int32, jnp.float32
    lead = (accum, micro)
    shapes = {
        "pretrain": [((*lead, T + 1), i32)],  # windows: inputs [:-1], targets [1:]
        "instruct": [((*lead, T), i32), ((*lead, T), i32)],  # inputs, targets
        "classify": [((*lead, T), i32), (lead, i32), (lead, i32), (lead, f32)],  # tokens, lengths, labels, weights
        "dpo": [((*lead, 2, T), i32), ((*lead, 2, T), i32), ((*lead, 2), f32), (lead, f32)],
    }[job.task]
    return tuple(jax.ShapeDtypeStruct(s, d) for s, d in shapes)


def build(job: Job, target: Target, micro: int) -> tuple[Engine, tuple]:
    """The engine as it would be built on `target` for this micro-batch, and its abstract batch."""
    devices = targets_lib.devices(target)
    tc = job.cfg.train
    cfg = dataclasses.replace(job.cfg, train=dataclasses.replace(tc, batch_size=micro * tc.grad_accum))
    probe = functools.partial(cudnn_compiles, device=devices[0])  # the trial compilation, for the target
    resolved = gpt.for_backend(cfg.model, micro, backend=target.kind, probe=probe)
    lora = job.parts.lora
    if job.task == "classify":
        model = GPTClassifier(resolved, job.n_classes)
        loss_fn = objectives.classifier(model, lora)
    else:
        model = GPT(resolved)
        loss_fn = objectives.preference(model, job.beta, lora) if job.task == "dpo" else objectives.language_model(model, lora)
    engine = Engine(cfg, model, loss_fn, job.parts, devices=devices)
    batch = tuple(jax.ShapeDtypeStruct(b.shape, b.dtype, sharding=engine.batch_sharding)
                  for b in _batch(job, tc.grad_accum, micro))
    return engine, batch


_OOM = re.compile(r"(exceeds available HBM|RESOURCE_EXHAUSTED|[Oo]ut of memory|Ran out of memory)")
_SIZE = re.compile(r"([0-9.]+)([KMGT])\b")


def _refusal_bytes(message: str) -> int:
    """The largest size an out-of-memory message names (e.g. "HLO temporaries (23.39G)"), in bytes."""
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return max((int(float(n) * scale[u]) for n, u in _SIZE.findall(message)), default=0)


@contextlib.contextmanager
def _uncached():
    """JAX's persistent compilation cache kept out: a program for devices that are not here cannot be
    loaded back. Off if it has not started in this process; if it has (JAX decides that once), it writes
    nothing, so there is nothing to read."""
    saved = {k: getattr(jax.config, k) for k in
             ("jax_enable_compilation_cache", "jax_persistent_cache_min_compile_time_secs")}
    jax.config.update("jax_enable_compilation_cache", False)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        yield
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)


def compile_step(job: Job, target: Target, micro: int, usable: int, say: Callable[[str], None] | None = None) -> Fit:
    """Compile the train step for `micro` sequences per micro-batch and measure it (see `Fit`)."""
    with _uncached():
        return _compile_step(job, target, micro, usable, say)


def _compile_step(job, target, micro, usable, say) -> Fit:
    say = say or _status
    say(f"compiling the {job.task} step for {target.name}, micro-batch {micro} ...")
    t0 = time.perf_counter()
    engine, batch = build(job, target, micro)
    state, frozen = engine.abstract_state, engine.abstract_frozen
    sizes = dict(micro=micro, params=_shard_bytes(state.params), opt_state=_shard_bytes(state.opt_state),
                 frozen=_shard_bytes(frozen), batch=_shard_bytes(batch), usable=usable,
                 attention=engine.model.config.attention, n_params=engine.n_params,
                 n_trainable=engine.n_trainable, mesh=dict(engine.mesh.shape))
    try:
        compiled = engine.train_step.lower(state, batch, frozen).compile()
    except Exception as e:  # a TPU compiler refuses a program larger than the chip's memory
        text = str(e)
        if not _OOM.search(text):
            raise
        line = next((s for s in text.splitlines() if _OOM.search(s)), text.splitlines()[0]).strip()
        need = max(_refusal_bytes(text), usable + 1)
        return Fit(**sizes, temporaries=need, total=need, seconds=time.perf_counter() - t0, refused=line[:300])
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + max(m.output_size_in_bytes - m.alias_size_in_bytes, 0) + m.temp_size_in_bytes
    text = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = float(cost["flops"]) if isinstance(cost, dict) and cost.get("flops") else None
    return Fit(**sizes, temporaries=m.temp_size_in_bytes, total=total, seconds=time.perf_counter() - t0,
               kernels=hlo.kernels(text), collectives=hlo.collectives(text), xla_flops=flops)


def _status(text: str) -> None:
    """The progress line while compiling (stdout, beside the tables; stderr holds only an error's one line)."""
    print(text, flush=True)


def batch_parallelism(job: Job, target: Target) -> int:
    """How many ways the micro-batch is split on `target` (mesh.data x mesh.fsdp)."""
    shape = sharding.mesh_shape(job.cfg.mesh, target.n_devices)
    return shape[0] * shape[1]


def sizes(limit: int = SEARCH_LIMIT) -> list[int]:
    """The micro-batch sizes searched, in units of the batch parallelism: every size to 16, then 8 per
    doubling (16, 18, 20, ..., 32, 36, 40, ...): at most 12.5% apart, so a search takes a few compilations."""
    out = list(range(1, 17))
    while out[-1] < limit:
        step = 1 << (out[-1].bit_length() - 4)
        out.append(out[-1] + step)
    return out


def _predicted(known: dict[int, Fit], usable: int) -> float | None:
    """The micro-batch at which memory, fitted as a straight line through the two largest compiled sizes,
    reaches `usable`; None before there are two."""
    points = sorted((m, f.total) for m, f in known.items() if not f.refused)[-2:]
    if len(points) < 2 or points[1][1] <= points[0][1]:
        return None
    (m0, t0), (m1, t1) = points
    return m0 + (usable - t0) * (m1 - m0) / (t1 - t0)


def largest_micro_batch(job: Job, target: Target, usable: int, known: dict[int, Fit],
                        say: Callable[[str], None] | None = None) -> tuple[Fit | None, Fit | None]:
    """(the Fit of the largest searched micro-batch that fits, that of the next searched size, which does
    not). Sizes are p x `sizes()`, p the batch parallelism; `known` holds compilations already made (by
    micro-batch) and receives the new ones. The first is None when even p does not fit; the second when
    p x SEARCH_LIMIT fits.

    The search is a bisection over those sizes; where memory is still linear in the micro-batch, the first
    probe goes where a line through the two largest compilations reaches the limit. Either way the answer
    is a compiled fit next to a compiled non-fit, never an extrapolation.
    """
    p = batch_parallelism(job, target)
    grid = sizes()

    def fits(i: int) -> bool:
        m = grid[i] * p
        if m not in known:
            known[m] = compile_step(job, target, m, usable, say)
        return known[m].fits

    lo, hi = -1, len(grid)  # fits(lo) (or lo = -1), not fits(hi) (or hi = len(grid))
    for m, f in known.items():  # what is already compiled narrows the range
        if m % p == 0 and m // p in grid:
            i = grid.index(m // p)
            lo, hi = (max(lo, i), hi) if f.fits else (lo, min(hi, i))
    guess_used = False
    while hi - lo > 1:
        if lo >= 0 and hi == len(grid):  # nothing known to fail yet: grow fast
            target_m = _predicted(known, usable)
            want = min(max(2 * grid[lo], (target_m or 0) / p * 1.05), 8 * grid[lo])
            i = min(next((j for j, g in enumerate(grid) if g >= want), len(grid) - 1), hi - 1)
            i = max(i, lo + 1)
        else:
            i = (lo + hi) // 2
            guess = None if guess_used else _predicted(known, usable)
            if guess is not None and lo >= 0:
                guess_used = True
                j = max((j for j, g in enumerate(grid) if g * p <= guess), default=lo)
                i = min(max(j, lo + 1), hi - 1)
        lo, hi = (i, hi) if fits(i) else (lo, i)
    best = known[grid[lo] * p] if lo >= 0 else None
    nxt = known[grid[hi] * p] if hi < len(grid) else None
    return best, nxt
