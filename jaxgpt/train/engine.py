"""The one training engine: pretraining and every finetune run on it.

A task (`Task`, task.py) is a loss function (model/objectives.py), a data source (a batch for every step,
fixed evaluation batches) and what it writes at the end. The engine does everything else, once for all of
them: the mesh and the sharded state, the jitted step with donation, the progress line, evaluations,
Orbax checkpoints (the latest N plus the best by validation loss), SIGTERM/Ctrl-C saves, exact resume
after SIGKILL, the non-finite policy and many processes. The run directory's files and rules are RunDir's
(store/rundir.py).

It comes in three pieces: `Engine(...)` builds (mesh, shardings, jitted steps) from a resolved config;
`start`/`restore` give the state and the frozen weights; `run(task)` is the loop.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from jaxgpt import runtime
from jaxgpt.config import Config, parse_steps
from jaxgpt.errors import UserError
from jaxgpt.model import lora as lora_lib
from jaxgpt.model import parts as parts_lib
from jaxgpt.model.gpt import count_params, init_boxed
from jaxgpt.model.objectives import LossFn
from jaxgpt.report.board import Board, Profile
from jaxgpt.report.progress import Progress, flops_per_token, format_count, peak_flops
from jaxgpt.runtime import StopFlag
from jaxgpt.store import checkpoint
from jaxgpt.store.rundir import RunDir
from jaxgpt.train import sharding
from jaxgpt.train.optim import lr_schedule, make_optimizer
from jaxgpt.train.steps import TrainState, eval_step, means, train_step
from jaxgpt.train.task import Task


def _ordered(metrics: dict) -> dict:
    """The loss first, then the rest by name (jit returns dicts sorted by key)."""
    return dict(sorted(metrics.items(), key=lambda kv: (not kv[0].endswith("loss"), kv[0])))


def _overlay(full: dict, given: dict) -> dict:
    """`full` with every leaf that `given` has replaced by given's."""
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(full), **traverse_util.flatten_dict(given)})


class Engine:
    """The mesh, shardings and jitted steps of one run, and the loop (`run`).

    Args:
        cfg: the run's validated config (what config.json records).
        model: the module being trained, built from the *resolved* model config (`train.pretrain.resolve`,
            `model.gpt.for_backend`).
        loss_fn: see model/objectives.py.
        parts: which parameters train (all of them by default).
        devices: the devices the mesh is laid over (default: all of them, across every process).
    """

    def __init__(self, cfg: Config, model: nn.Module, loss_fn: LossFn,
                 parts: parts_lib.Parts = parts_lib.Parts(), devices=None):
        tc = cfg.train
        self.cfg, self.model, self.parts, self.loss_fn = cfg, model, parts, loss_fn
        self.mesh = sharding.make_mesh(cfg.mesh, devices)  # an impossible mesh is refused before any work
        self.micro_batch = tc.batch_size // tc.grad_accum
        sharding.check_batch(self.mesh, self.micro_batch)
        self.tx, self.schedule = make_optimizer(tc), lr_schedule(tc)
        self.predicate = parts.predicate(model.config.n_layer)

        # Everything is laid out from shapes alone, and created already sharded: no device ever holds more
        # than its own part of the weights and optimizer state.
        boxed = jax.eval_shape(lambda: init_boxed(model, jax.random.key(0)))
        self.axes = sharding.param_axes(boxed)
        full = nn.unbox(boxed)
        trainable, frozen = parts_lib.partition(full, self.predicate)
        if parts.lora is not None:
            adapters = jax.eval_shape(lambda: lora_lib.init_adapters(full, parts.lora, jax.random.key(0)))
            trainable[parts_lib.ADAPTERS] = adapters
            self.axes.update(lora_lib.adapter_axes(self.axes, adapters, (parts_lib.ADAPTERS,)))
        state = jax.eval_shape(lambda p: TrainState.create(p, self.tx), trainable)
        self.shardings = functools.partial(sharding.tree_shardings, axes=self.axes, mesh=self.mesh,
                                           rules=cfg.mesh.rules)
        self.state_sharding, self.frozen_sharding = self.shardings(state), self.shardings(frozen)

        def placed(tree, shardings):
            return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)

        self.abstract_state, self.abstract_frozen = placed(state, self.state_sharding), placed(frozen, self.frozen_sharding)
        self.n_params = count_params(full)
        self.n_trainable = count_params(trainable)
        self.last_eval: dict[str, float] = {}  # the latest evaluation's means
        self.progress = Progress(tc.max_steps, False)  # replaced by `run`'s
        self.run_dir = Path(tc.out_dir)

        repl = sharding.replicated(self.mesh)
        self.batch_sharding = sharding.batch_sharding(self.mesh)  # (grad_accum, micro_batch, ...)
        self.eval_sharding = sharding.eval_batch_sharding(self.mesh)  # (B, ...)
        traced = sharding.activation_rules(self.mesh, cfg.mesh.rules)
        dropout = model.config.dropout > 0
        self.train_step = jax.jit(
            traced(functools.partial(train_step, loss_fn=loss_fn, tx=self.tx, seed=tc.seed, dropout=dropout,
                                     unroll=tc.grad_accum_unroll)),
            in_shardings=(self.state_sharding, self.batch_sharding, self.frozen_sharding),
            out_shardings=(self.state_sharding, repl), donate_argnums=0)
        self.eval_step = jax.jit(traced(functools.partial(eval_step, loss_fn=loss_fn)),
                                 in_shardings=(self.state_sharding.params, self.eval_sharding, self.frozen_sharding),
                                 out_shardings=repl)

    # --- the state ------------------------------------------------------------------------------------

    def start(self, given: dict | None = None) -> tuple[TrainState, dict]:
        """A fresh state and frozen weights: random initialisation where `given` (pretrained weights, a
        subtree of the full parameters, on the host or any device) has nothing, then LoRA adapters if any.
        The random weights that `given` replaces are never computed (XLA drops them)."""
        given = jax.tree.map(np.asarray, given or {})  # host copies: in_shardings then place each shard
        predicate, lora = self.predicate, self.parts.lora

        def start(given, key):
            full = _overlay(nn.unbox(init_boxed(self.model, key)), given)
            trainable, frozen = parts_lib.partition(full, predicate)
            if lora is not None:
                trainable[parts_lib.ADAPTERS] = lora_lib.init_adapters(full, lora, jax.random.fold_in(key, 1))
            return TrainState.create(trainable, self.tx), frozen

        make = jax.jit(start, in_shardings=(self.shardings(given), None),
                       out_shardings=(self.state_sharding, self.frozen_sharding))
        return make(given, jax.random.key(self.cfg.train.seed))  # in_shardings send each device only its shards

    def full_params(self, state: TrainState, frozen: dict) -> dict:
        """The model's whole parameter tree: trainable and frozen parts together, LoRA adapters merged."""
        return parts_lib.merged(parts_lib.combine(state.params, frozen), self.parts.lora)

    def put(self, batch: tuple, train: bool = True) -> tuple[jax.Array, ...]:
        """A host batch as global arrays on the mesh (each process reads only its own rows)."""
        return sharding.put_batch(batch, self.batch_sharding if train else self.eval_sharding)

    def evaluate(self, params, frozen: dict, sets: dict[str, list[tuple]]) -> dict[str, float]:
        """Means over each set's batches, named `<set>_<metric>` (e.g. val_loss)."""
        out = {}
        for name, batches in sets.items():
            sums = [self.eval_step(params, self.put(b, train=False), frozen) for b in batches]
            total = jax.tree.map(lambda *xs: np.sum(xs, axis=0), *jax.device_get(sums))
            out.update({f"{name}_{k}": float(v) for k, v in _ordered(means(total)).items()})
        return out

    # --- the run directory ----------------------------------------------------------------------------

    def check_run_dir(self, run_dir: str | Path, task: Task, tokenizer_meta: dict | None) -> None:
        """Refuse to continue a run directory whose model, data, optimiser or task settings differ (`run`
        checks too; calling it early refuses before any other work)."""
        RunDir.check_path(run_dir).check_resume(self.cfg, task.name, task.settings, task.resumable, tokenizer_meta,
                                                task.added)

    def _prepare_run_dir(self, run: RunDir, progress: Progress, frozen_bytes: int) -> None:
        if run.primary:  # one process looks after the run directory; the others wait for it
            run.path.mkdir(parents=True, exist_ok=True)
            run.check_disk(checkpoint.estimate_bytes(self.abstract_state), frozen_bytes)
            for path in run.set_aside_partial():
                progress.print(f"moved an unfinished checkpoint (the last run was killed while saving it) to {path}")
        runtime.barrier("jaxgpt:run_dir")

    def _begin(self, run: RunDir, ckpt: checkpoint.Checkpointer, given, progress: Progress):
        """(state, frozen, meta): restored from the latest checkpoint, or fresh (frozen weights saved)."""
        step = ckpt.latest_step()
        frozen_dir = run.frozen
        if step is not None:
            state, meta = ckpt.restore(self.abstract_state, step)
            frozen = checkpoint.restore_tree(frozen_dir, self.abstract_frozen) if self.abstract_frozen else {}
            progress.print(f"resuming from {run.checkpoints}/{step} (step {step})")
            return state, frozen, meta
        state, frozen = self.start(given() if callable(given) else given)
        if self.abstract_frozen:
            if frozen_dir.exists() and runtime.is_primary():  # from a start killed before its first checkpoint
                shutil.rmtree(frozen_dir)
            runtime.barrier("jaxgpt:frozen")
            checkpoint.save_tree(frozen_dir, frozen)
        return state, frozen, {"tokens": 0, "best_val": None}

    def run(self, task: Task, run_dir: str | Path, tokenizer_meta: dict | None = None, given=None,
            progress: bool = True):
        """Train `task` into `run_dir` to train.max_steps, resuming from its latest checkpoint, or stop
        cleanly on a signal. `given`: pretrained weights for a fresh start (or a function returning them,
        called only then). Returns task.finish's result when max_steps is reached, else None."""
        run_dir = self.run_dir = Path(run_dir)
        tc, primary = self.cfg.train, runtime.is_primary()
        self.check_run_dir(run_dir, task, tokenizer_meta)
        out = self.progress = Progress(tc.max_steps, progress, quiet=not primary)
        Board.check(tc.tensorboard)
        files = RunDir(run_dir, primary)
        self._prepare_run_dir(files, out, checkpoint.estimate_bytes(self.abstract_frozen))
        ckpt = checkpoint.Checkpointer(run_dir, tc.keep_checkpoints)
        self.board = Board(run_dir, False)
        try:  # the board stays open for what the task writes at the end (the final sample)
            try:
                state, frozen, meta = self._begin(files, ckpt, given, out)
                self.board = Board(run_dir, tc.tensorboard, primary, purge_step=int(state.step) + 1)
                task.begin(self, state, frozen, resumed=meta.get("tokens", 0) > 0 or int(state.step) > 0)
                files.truncate_metrics(int(state.step))
                files.write_header(self.cfg, tokenizer_meta, {"task": task.name, "settings": task.settings,
                                                              **task.describe})
                procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
                trains = "" if self.n_trainable == self.n_params else f" ({format_count(self.n_trainable)} trained)"
                out.print(f"model: {format_count(self.n_params)} parameters{trains}, "
                          f"{self.model.config.n_layer} layers, context {self.model.config.block_size}; "
                          f"{task.summary + '; ' if task.summary else ''}mesh: {dict(self.mesh.shape)}{procs}")
                state, stopped = self._loop(task, state, frozen, meta, ckpt, files, out)
            finally:
                ckpt.wait()  # an asynchronous save in flight must land, even when the run fails
                ckpt.close()
            files.plot(task.plot_x, task.plots)
            result = None
            if not stopped and int(state.step) >= tc.max_steps:
                result = task.finish(self, state, frozen)
        finally:
            self.board.close()
        out.print(f"done: step {int(state.step)}, outputs in {run_dir}")
        return result

    # --- the loop -------------------------------------------------------------------------------------

    def _check_finite(self, m: dict, seen: int, ckpt: checkpoint.Checkpointer, progress: Progress) -> int:
        """Stop (or, with train.skip_nonfinite, report) updates skipped for a NaN/inf loss or gradient."""
        now = int(m["skipped"])
        if now > seen:
            where = f"step {int(m['first_skipped'])}" if seen == 0 else "a recent step"
            if not self.cfg.train.skip_nonfinite:
                kept = ckpt.latest_step()
                raise UserError(f"the loss or gradient was not finite at {where} (the update was not applied); "
                                "lower the learning rate, or set train.skip_nonfinite=true (--skip-nonfinite) to "
                                "skip such updates; "
                                + (f"the last good checkpoint, step {kept}, is kept" if kept else "no checkpoint yet"))
            progress.print(f"skipped a non-finite update at {where}; {now} skipped so far")
        return now

    def _stop_requested(self, stop: StopFlag, done: int) -> bool:
        """A signal stops the run at the next step boundary. Several processes must stop at the same step,
        so they agree on it at each log interval (a cluster signals them all, not at the same instant)."""
        if jax.process_count() == 1:
            return stop.signal is not None
        return done % self.cfg.train.log_interval == 0 and runtime.any_process(stop.signal is not None)

    def _loop(self, task: Task, state, frozen, meta: dict, ckpt, files: RunDir, progress: Progress):
        """Returns (state, whether a signal stopped the run)."""
        tc = self.cfg.train
        start = int(state.step)
        peak, fpt = peak_flops(), flops_per_token(self.model.config, self.n_params)
        peak = peak and peak * jax.process_count()  # tokens/s counts every process's share of the batch
        seen, skipped = meta["tokens"], int(state.skipped)
        t0, t0_seen = time.perf_counter(), seen
        sets = task.eval_sets()
        profile = Profile(self.run_dir, parse_steps(tc.profile_steps))

        def emit(record: dict) -> None:
            files.write_metrics(record)
            self.board.scalars(record)

        with StopFlag() as stop:
            for step in range(start, tc.max_steps):
                batch = task.batch(step)
                profile.before(step + 1)
                state, metrics = self.train_step(state, self.put(batch), frozen)
                if profile.after(step + 1, metrics):
                    t0, t0_seen = time.perf_counter(), seen + task.batch_tokens(batch)
                seen += task.batch_tokens(batch)
                done = step + 1
                if step == start:  # leave compilation out of the throughput figures
                    jax.block_until_ready(metrics)
                    t0, t0_seen = time.perf_counter(), seen
                if done % tc.log_interval == 0 or done == tc.max_steps:
                    m = jax.device_get(metrics)  # the only host sync between evaluations
                    tps = (seen - t0_seen) / max(time.perf_counter() - t0, 1e-9)
                    skipped = self._check_finite(m, skipped, ckpt, progress)
                    mfu = tps * fpt / peak if peak else None
                    progress.update(done, f"loss {m['loss']:.4f} | {format_count(tps)} tok/s"
                                    + (f" | MFU {100 * mfu:.0f}%" if mfu is not None else ""), start)
                    kept = {k: float(v) for k, v in _ordered(m).items() if k not in ("skipped", "first_skipped")}
                    emit({"step": done, **task.record(done), "tokens": seen, **kept, "lr": float(self.schedule(step)),
                          "tokens_per_s": tps, **({"mfu": mfu} if mfu is not None else {}),
                          **({"skipped": skipped} if skipped else {})})
                    t0, t0_seen = time.perf_counter(), seen
                if done % tc.eval_interval == 0 or done == tc.max_steps:
                    last = self.last_eval = task.summarize({**self.evaluate(state.params, frozen, sets),
                                                            **task.extra_eval(self, state, frozen)})
                    best = min(last.get("val_loss", float("inf")), meta["best_val"] or float("inf"))
                    meta = {"tokens": seen, "best_val": best if best < float("inf") else None}
                    progress.print(f"step {done}: " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in last.items()))
                    emit({"step": done, **task.record(done), "tokens": seen, **last})
                    ckpt.save(done, state, meta, last.get("val_loss"))
                    t0, t0_seen = time.perf_counter(), seen  # evaluation is not training throughput
                if task.after_step(self, state, frozen, done):
                    t0, t0_seen = time.perf_counter(), seen
                if self._stop_requested(stop, done):
                    ckpt.save(done, state, {**meta, "tokens": seen})
                    how = f"signal {stop.signal}" if stop.signal else "a signal to another process"
                    progress.print(f"stopped by {how} at step {done}; checkpoint saved, "
                                   "run the same command again to resume")
                    profile.close()
                    return state, True
        profile.close()
        return state, False
