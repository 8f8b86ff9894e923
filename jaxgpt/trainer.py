"""The pretraining loop: prepare data, build or resume the state, train, evaluate, sample, checkpoint.

This is the only library module that touches the run directory and the terminal. Its outputs in
`train.out_dir`: config.json, tokenizer.json, checkpoints/, metrics.jsonl, loss.png and samples.txt.
Rerunning on the same directory resumes from the latest checkpoint; Ctrl-C or SIGTERM saves and stops.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import checkpoint, config as config_lib, data, distributed, sharding
from jaxgpt.config import Config
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, check_compute_dtype, count_params, init_params
from jaxgpt.optim import make_optimizer
from jaxgpt.progress import Progress, flops_per_token, format_count, peak_flops
from jaxgpt.run_files import RunFiles
from jaxgpt.sampling import generate
from jaxgpt.steps import TrainState, eval_step, train_step
from jaxgpt.tokenizer import tokenizer_from_meta

EVAL_SEED_OFFSET = 1_000_003  # evaluation batches use their own, fixed stream of windows


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop at the next step boundary."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _check_resume(run_dir: Path, cfg: Config, tokenizer_meta: dict) -> None:
    """Refuse to continue a run directory whose model, data or optimiser settings differ."""
    old = checkpoint.read_run_config(run_dir)
    if old is not None:
        changed = [d for d in config_lib.diff(old, cfg) if d.split(":")[0] not in config_lib.RESUMABLE_KEYS]
        if changed:
            raise UserError(f"{run_dir} holds a run with other settings ({'; '.join(changed)}); "
                            "use a new train.out_dir or the settings of the existing run")
    saved = checkpoint.read_tokenizer_meta(run_dir)
    if saved is not None and saved != tokenizer_meta:
        raise UserError(f"the tokenizer of the data differs from the one saved in "
                        f"{run_dir / checkpoint.TOKENIZER_FILE}; "
                        "use the run's data or a new train.out_dir")


def _adopt_pretrained(cfg: Config, tokenizer_meta: dict, vocab_size: int) -> Config:
    """Take the model's shape from `train.init_from`, after checking it fits the data and the context."""
    from jaxgpt import convert

    src = cfg.train.init_from
    pre, pre_tok = convert.read_config(src), convert.read_tokenizer_meta(src)
    if pre_tok is not None and pre_tok != tokenizer_meta:
        hint = (f"set --data.tokenizer={pre_tok['kind']}" if pre_tok["kind"] != tokenizer_meta["kind"]
                else "use data with the same characters or words")
        raise UserError(f"the model in {src} was trained with another tokenizer ({pre_tok['kind']}) than the "
                        f"data's ({tokenizer_meta['kind']}); {hint}")
    if pre_tok is None and vocab_size > pre.vocab_size:
        raise UserError(f"the data's tokenizer has {vocab_size} tokens but the model in {src} only {pre.vocab_size}")
    if cfg.model.block_size > pre.block_size:
        raise UserError(f"model.block_size={cfg.model.block_size} exceeds the {pre.block_size} positions of the "
                        f"model in {src}; set --model.block_size={pre.block_size} or less")
    shape = {f: getattr(pre, f) for f in ("vocab_size", "n_layer", "n_head", "n_embd", "qkv_bias", "layer_norm_eps")}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **shape))


class Trainer:
    """Holds what one run needs; `run()` trains to `train.max_steps`.

    `devices` (default: all of them, across every process) is the set the mesh is laid over.
    """

    def __init__(self, cfg: Config, devices=None):
        cfg = config_lib.validate(cfg)
        distributed.initialize(cfg.dist)  # before any device is touched
        tc = cfg.train
        self.mesh = sharding.make_mesh(cfg.mesh, devices)  # an impossible mesh is refused before any work
        self.micro_batch = tc.batch_size // tc.grad_accum
        sharding.check_batch(self.mesh, self.micro_batch)
        check_compute_dtype(cfg.model.dtype, jax.default_backend())
        self.run_dir = Path(tc.out_dir)
        if self.run_dir.is_symlink() and not self.run_dir.exists():
            raise UserError(f"train.out_dir {self.run_dir} is a broken symbolic link; fix it or choose another folder")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"train.out_dir {self.run_dir} exists and is not a directory")
        self.primary = distributed.is_primary()
        self.files = RunFiles(self.run_dir, self.primary)
        if not self.primary:  # process 0 prepares the shared token files first; the others then read them
            distributed.barrier("jaxgpt:prepare")
        self.data = data.prepare(cfg.data.source, cfg.data.tokenizer, cfg.data.cache_dir, cfg.data.val_fraction)
        if self.primary:
            distributed.barrier("jaxgpt:prepare")
        self.tokenizer = tokenizer_from_meta(self.data.tokenizer_meta)
        self._prompt_ids(tc.sample_prompt)  # a prompt that cannot be used is found now, not after training
        if tc.init_from:  # the pretrained model fixes the shape; dropout, dtypes and context stay ours
            cfg = _adopt_pretrained(cfg, self.data.tokenizer_meta, self.tokenizer.vocab_size)
        else:  # the vocabulary belongs to the data: the output layer is sized from the tokenizer
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=self.tokenizer.vocab_size))
        self.cfg = cfg
        _check_resume(self.run_dir, cfg, self.data.tokenizer_meta)
        for split, tokens in (("train", self.data.train), ("validation", self.data.val)):
            if len(tokens) < cfg.model.block_size + 1:
                raise UserError(f"the {split} split has {len(tokens)} tokens but one window needs "
                                f"{cfg.model.block_size + 1}; lower model.block_size or use a longer corpus")

        self.model = GPT(cfg.model)
        self.tx = make_optimizer(tc)
        repl = sharding.replicated(self.mesh)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.eval_sharding = sharding.eval_batch_sharding(self.mesh)

        def init(key):
            return TrainState.create(init_params(cfg.model, key), self.tx)

        # The state is laid out from its shapes alone and created already sharded: no device ever holds
        # more than its own part of the weights and optimizer state.
        abstract = jax.eval_shape(init, jax.random.key(tc.seed))
        self.state_sharding = sharding.state_shardings(abstract, self.mesh, cfg.mesh.rules)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_sharding)
        self._init = jax.jit(init, out_shardings=self.state_sharding)
        self._create = jax.jit(lambda params: TrainState.create(params, self.tx),
                               in_shardings=(self.state_sharding.params,), out_shardings=self.state_sharding)
        self.train_step = jax.jit(
            sharding.constrain_activations(functools.partial(train_step, model=self.model, tx=self.tx,
                                                             seed=tc.seed), self.mesh),
            in_shardings=(self.state_sharding, (self.batch_sharding,) * 2),
            out_shardings=(self.state_sharding, repl), donate_argnums=0,
        )
        self.eval_step = jax.jit(sharding.constrain_activations(functools.partial(eval_step, model=self.model),
                                                                self.mesh),
                                 in_shardings=(self.state_sharding.params, (self.eval_sharding,) * 2),
                                 out_shardings=repl)
        self.n_params = count_params(abstract.params)
        self.tokens_per_step = tc.batch_size * cfg.model.block_size

    def _windows(self, tokens, starts: np.ndarray, shard) -> tuple[jax.Array, jax.Array]:
        """(x, y) global arrays of shape starts.shape + (T,) on `shard`; this process reads from `tokens`
        only the windows of the rows its devices hold."""
        T = self.cfg.model.block_size

        def read(index):  # index: slices into (..., T); the last dimension is never split
            windows = data.read_windows(tokens, starts[index[:-1]], T)  # (..., T + 1)
            return windows[..., :-1], windows[..., 1:]

        return sharding.assemble((*starts.shape, T), shard, read, 2)

    def batch(self, step: int):
        """The training batch of `step`, shaped (grad_accum, micro_batch, T) and placed on the mesh. The
        global batch depends only on (seed, step), never on the number of processes."""
        tc, T = self.cfg.train, self.cfg.model.block_size
        starts = data.window_starts(len(self.data.train), tc.batch_size, T, tc.seed, step)
        return self._windows(self.data.train, starts.reshape(tc.grad_accum, self.micro_batch), self.batch_sharding)

    def evaluate(self, params) -> dict[str, float]:
        """Mean loss over `eval_steps` fixed batches of each split (the same batches every time)."""
        tc, T = self.cfg.train, self.cfg.model.block_size
        out = {}
        for name, tokens in (("train", self.data.train), ("val", self.data.val)):
            losses = []
            for i in range(tc.eval_steps):
                starts = data.window_starts(len(tokens), self.micro_batch, T, tc.seed + EVAL_SEED_OFFSET, i)
                losses.append(self.eval_step(params, self._windows(tokens, starts, self.eval_sharding))["loss"])
            out[f"{name}_loss"] = float(np.mean(jax.device_get(losses)))
        out["val_perplexity"] = float(np.exp(out["val_loss"]))
        return out

    def _prompt_ids(self, text: str) -> list[int]:
        """The prompt's token ids; one that encodes to nothing starts a new document (end-of-text) if it can."""
        try:
            ids = self.tokenizer.encode(text)
        except UserError as e:
            raise UserError(f"train.sample_prompt cannot be encoded ({e}); set --train.sample_prompt= to text "
                            "made of the corpus's characters") from None
        if ids or self.tokenizer.eot_id is not None:
            return ids or [self.tokenizer.eot_id]
        raise UserError(f"train.sample_prompt {text!r} encodes to no tokens with the {self.tokenizer.name} "
                        "tokenizer; set --train.sample_prompt= to some text of the corpus")

    def sample(self, params, seed: int, prompt: str | None = None, tokens: int | None = None) -> str:
        tc = self.cfg.train
        ids = self._prompt_ids(tc.sample_prompt if prompt is None else prompt)
        out = generate(self.model, params, ids, tokens or tc.sample_tokens, key=jax.random.key(seed),
                       temperature=0.8, top_k=40, eot_id=self.tokenizer.eot_id)
        return self.tokenizer.decode(out[0].tolist())

    def _restore_or_init(self, ckpt: checkpoint.Checkpointer, progress: Progress):
        step = ckpt.latest_step()
        if step is None and self.cfg.train.init_from:
            return self._pretrained(progress), {"tokens": 0, "best_val": None}
        if step is None:
            return self._init(jax.random.key(self.cfg.train.seed)), {"tokens": 0, "best_val": None}
        state, meta = ckpt.restore(self.abstract_state, step)
        progress.print(f"resuming from {self.run_dir}/checkpoints/{step} (step {step})")
        return state, meta

    def _pretrained(self, progress: Progress) -> TrainState:
        """A fresh TrainState around the weights of `train.init_from`, cut to our context length."""
        from jaxgpt import convert

        src, m = self.cfg.train.init_from, self.cfg.model
        _, params = convert.load_pretrained(src)
        params = {**params, "wpe": {"embedding": params["wpe"]["embedding"][:m.block_size]}}
        params = jax.tree.map(lambda a: np.asarray(a, jnp.dtype(m.param_dtype)), params)  # still on the host
        progress.print(f"initialised from {src}: {m.n_layer} layers, {m.n_head} heads, width {m.n_embd}, "
                       f"vocab {m.vocab_size}, context {m.block_size}")
        return self._create(params)  # its in_shardings send each device only its own shards

    def run(self) -> dict:
        """Train to train.max_steps (or until interrupted). Returns the last evaluation's metrics."""
        cfg, tc = self.cfg, self.cfg.train
        progress = Progress(tc.max_steps, tc.progress, quiet=not self.primary)
        files = self.files
        if self.primary:  # one process looks after the run directory; the others wait for it
            self.run_dir.mkdir(parents=True, exist_ok=True)
            files.check_disk(checkpoint.estimate_bytes(self.abstract_state))
            for path in checkpoint.set_aside_partial(self.run_dir):
                progress.print(f"moved an unfinished checkpoint (the last run was killed while saving it) to {path}")
        distributed.barrier("jaxgpt:run_dir")
        ckpt = checkpoint.Checkpointer(self.run_dir, tc.keep_checkpoints)
        try:
            state, meta = self._restore_or_init(ckpt, progress)
            if self.primary:
                files.truncate_metrics(int(state.step))
                config_lib.save_json(cfg, self.run_dir / checkpoint.CONFIG_FILE)
                (self.run_dir / checkpoint.TOKENIZER_FILE).write_text(json.dumps(self.data.tokenizer_meta))
            procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
            progress.print(f"model: {format_count(self.n_params)} parameters, {cfg.model.n_layer} layers, "
                           f"context {cfg.model.block_size}, vocab {cfg.model.vocab_size}; data: "
                           f"{format_count(len(self.data.train))} train tokens; mesh: {dict(self.mesh.shape)}{procs}")
            state, last = self._loop(state, meta, ckpt, progress)
        finally:
            ckpt.wait()  # an asynchronous save in flight must land, even when the run fails
            ckpt.close()
        if self.primary and (self.run_dir / "metrics.jsonl").exists():
            files.plot()
        if int(state.step) >= tc.max_steps:
            text = self.sample(state.params, tc.seed, tokens=max(tc.sample_tokens, 1))
            files.log_sample(int(state.step), text, progress, "final sample")
        progress.print(f"done: step {int(state.step)}, outputs in {self.run_dir}")
        return last

    def _check_finite(self, m: dict, seen: int, ckpt: checkpoint.Checkpointer, progress: Progress) -> int:
        """Stop (or, with train.skip_nonfinite, report) updates skipped for a NaN/inf loss or gradient."""
        now = int(m["skipped"])
        if now > seen:
            where = f"step {int(m['first_skipped'])}" if seen == 0 else "a recent step"
            if not self.cfg.train.skip_nonfinite:
                kept = ckpt.latest_step()
                raise UserError(f"the loss or gradient was not finite at {where} (the update was not applied); "
                                "lower train.learning_rate, or set train.skip_nonfinite=true to skip such updates; "
                                + (f"the last good checkpoint, step {kept}, is kept" if kept else "no checkpoint yet"))
            progress.print(f"skipped a non-finite update at {where}; {now} skipped so far")
        return now

    def _stop_requested(self, stop: _StopFlag, done: int) -> bool:
        """A signal stops the run at the next step boundary. Several processes must stop at the same step,
        so they agree on it at each log interval (a cluster signals them all, not at the same instant)."""
        if jax.process_count() == 1:
            return stop.signal is not None
        return done % self.cfg.train.log_interval == 0 and distributed.any_process(stop.signal is not None)

    def _loop(self, state, meta: dict, ckpt: checkpoint.Checkpointer, progress: Progress):
        tc = self.cfg.train
        start = int(state.step)
        peak, fpt = peak_flops(), flops_per_token(self.cfg.model, self.n_params)
        peak = peak and peak * jax.process_count()  # tokens/s counts every process's share of the batch
        tokens, last, skipped = meta["tokens"], {}, int(state.skipped)
        t0, t0_step = time.perf_counter(), start
        with _StopFlag() as stop:
            for step in range(start, tc.max_steps):
                state, metrics = self.train_step(state, self.batch(step))
                tokens += self.tokens_per_step
                done = step + 1
                if step == start:  # leave compilation out of the throughput figures
                    jax.block_until_ready(metrics)
                    t0, t0_step = time.perf_counter(), done
                if done % tc.log_interval == 0 or done == tc.max_steps:
                    m = jax.device_get(metrics)  # the only host sync between evaluations
                    tps = (done - t0_step) * self.tokens_per_step / max(time.perf_counter() - t0, 1e-9)
                    skipped = self._check_finite(m, skipped, ckpt, progress)
                    mfu = f" | MFU {100 * tps * fpt / peak:.0f}%" if peak else ""
                    progress.update(done, f"loss {m['loss']:.4f} | {format_count(tps)} tok/s{mfu}", start)
                    self.files.write_metrics({"step": done, "tokens": tokens, "loss": float(m["loss"]),
                                         "grad_norm": float(m["grad_norm"]), "tokens_per_s": tps,
                                         **({"skipped": skipped} if skipped else {})})
                    t0, t0_step = time.perf_counter(), done
                if done % tc.eval_interval == 0 or done == tc.max_steps:
                    last = self.evaluate(state.params)
                    best = min(last["val_loss"], meta["best_val"] or float("inf"))
                    meta = {"tokens": tokens, "best_val": best}
                    progress.print(f"step {done}: train loss {last['train_loss']:.4f}, val loss "
                                   f"{last['val_loss']:.4f}, val perplexity {last['val_perplexity']:.2f}")
                    self.files.write_metrics({"step": done, "tokens": tokens, **last})
                    ckpt.save(done, state, meta, last["val_loss"])
                    t0, t0_step = time.perf_counter(), done  # evaluation is not training throughput
                if tc.sample_interval and done % tc.sample_interval == 0 and done < tc.max_steps:
                    self.files.log_sample(done, self.sample(state.params, done), progress, f"sample at step {done}")
                    t0, t0_step = time.perf_counter(), done
                if self._stop_requested(stop, done):
                    ckpt.save(done, state, {**meta, "tokens": tokens})
                    how = f"signal {stop.signal}" if stop.signal else "a signal to another process"
                    progress.print(f"stopped by {how} at step {done}; checkpoint saved, "
                                   "run the same command again to resume")
                    break
        return state, last


def train(cfg: Config) -> dict:
    """Run (or resume) the training described by `cfg`; returns the last evaluation's metrics."""
    return Trainer(cfg).run()
