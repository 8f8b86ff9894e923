"""The pretraining loop: prepare data, build or resume the state, train, evaluate, sample, checkpoint.

This is the only library module that touches the run directory and the terminal. Its outputs in
`train.out_dir`: config.json, tokenizer.json, checkpoints/, metrics.jsonl, loss.png and samples.txt.
Rerunning on the same directory resumes from the latest checkpoint; Ctrl-C or SIGTERM saves and stops.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import checkpoint, config as config_lib, data, sharding
from jaxgpt.config import Config
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, count_params, init_params
from jaxgpt.optim import make_optimizer
from jaxgpt.progress import Progress, flops_per_token, format_count, peak_flops
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
    """Holds what one run needs; `run()` trains to `train.max_steps`."""

    def __init__(self, cfg: Config):
        cfg = config_lib.validate(cfg)
        tc = cfg.train
        self.run_dir = Path(tc.out_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"train.out_dir {self.run_dir} exists and is not a directory")
        self.data = data.prepare(cfg.data.source, cfg.data.tokenizer, cfg.data.cache_dir, cfg.data.val_fraction)
        self.tokenizer = tokenizer_from_meta(self.data.tokenizer_meta)
        try:  # found now, not when the first sample is drawn after training
            self.tokenizer.encode(tc.sample_prompt)
        except UserError as e:
            raise UserError(f"train.sample_prompt cannot be encoded ({e}); set --train.sample_prompt= to text "
                            "made of the corpus's characters") from None
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

        self.mesh = sharding.make_mesh()
        self.micro_batch = tc.batch_size // tc.grad_accum
        sharding.check_batch(self.mesh, self.micro_batch)
        self.model = GPT(cfg.model)
        self.tx = make_optimizer(tc)
        repl = sharding.replicated(self.mesh)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.eval_sharding = sharding.eval_batch_sharding(self.mesh)

        def init(key):
            return TrainState.create(init_params(cfg.model, key), self.tx)

        abstract = jax.eval_shape(init, jax.random.key(tc.seed))
        self.state_sharding = jax.tree.map(lambda _: repl, abstract)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_sharding)
        self._init = jax.jit(init, out_shardings=self.state_sharding)
        self._create = jax.jit(lambda params: TrainState.create(params, self.tx), out_shardings=self.state_sharding)
        self.train_step = jax.jit(
            functools.partial(train_step, model=self.model, tx=self.tx, seed=tc.seed),
            in_shardings=(self.state_sharding, (self.batch_sharding,) * 2),
            out_shardings=(self.state_sharding, repl), donate_argnums=0,
        )
        self.eval_step = jax.jit(functools.partial(eval_step, model=self.model),
                                 in_shardings=(self.state_sharding.params, (self.eval_sharding,) * 2),
                                 out_shardings=repl)
        self.n_params = count_params(abstract.params)
        self.tokens_per_step = tc.batch_size * cfg.model.block_size

    def batch(self, step: int):
        """The training batch of `step`, shaped (grad_accum, micro_batch, T) and placed on the mesh."""
        tc, T = self.cfg.train, self.cfg.model.block_size
        x, y = data.get_batch(self.data.train, tc.batch_size, T, tc.seed, step)
        shape = (tc.grad_accum, self.micro_batch, T)
        return sharding.put_batch((x.reshape(shape), y.reshape(shape)), self.batch_sharding)

    def evaluate(self, params) -> dict[str, float]:
        """Mean loss over `eval_steps` fixed batches of each split (the same batches every time)."""
        tc, T = self.cfg.train, self.cfg.model.block_size
        out = {}
        for name, tokens in (("train", self.data.train), ("val", self.data.val)):
            losses = []
            for i in range(tc.eval_steps):
                xy = data.get_batch(tokens, self.micro_batch, T, tc.seed + EVAL_SEED_OFFSET, i)
                losses.append(self.eval_step(params, sharding.put_batch(xy, self.eval_sharding))["loss"])
            out[f"{name}_loss"] = float(np.mean(jax.device_get(losses)))
        out["val_perplexity"] = float(np.exp(out["val_loss"]))
        return out

    def sample(self, params, seed: int, prompt: str | None = None, tokens: int | None = None) -> str:
        tc = self.cfg.train
        ids = self.tokenizer.encode(tc.sample_prompt if prompt is None else prompt)
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
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.dtype(m.param_dtype)), params)
        progress.print(f"initialised from {src}: {m.n_layer} layers, {m.n_head} heads, width {m.n_embd}, "
                       f"vocab {m.vocab_size}, context {m.block_size}")
        return self._create(params)

    def _log_sample(self, step: int, text: str, progress: Progress, title: str) -> None:
        """Print a sample and append it to samples.txt (earlier samples are kept)."""
        progress.print(f"--- {title} ---\n{text}\n---")
        with (self.run_dir / "samples.txt").open("a") as f:
            f.write(f"--- step {step} ---\n{text}\n\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop records of steps after the checkpoint we resume from (those steps run again), and a last
        line cut short when the previous process was killed while writing it."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
            kept = []
            for line in lines:
                try:
                    if line.endswith("\n") and json.loads(line)["step"] <= step:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    pass  # a torn line: the process died mid-write
            if len(kept) < len(lines):
                path.write_text("".join(kept))

    def _check_disk(self) -> None:
        """Refuse to start when the run directory cannot be written or cannot hold two checkpoints."""
        probe = self.run_dir / ".write-test"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write in {self.run_dir} ({e.strerror}); choose another train.out_dir") from None
        need = 2 * checkpoint.estimate_bytes(self.abstract_state)
        free = shutil.disk_usage(self.run_dir).free
        if free < need:
            raise UserError(f"{self.run_dir} has {format_count(free)}B free but two checkpoints of this model need "
                            f"about {format_count(need)}B; free some space or choose another train.out_dir")

    def _write_metrics(self, record: dict) -> None:
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _plot(self) -> None:
        from jaxgpt.plot import plot_lines  # only needed once, at the end of a run

        records = [json.loads(l) for l in (self.run_dir / "metrics.jsonl").read_text().splitlines() if l]
        series = {}
        for key, label in (("loss", "train"), ("val_loss", "validation")):
            pts = [(r["tokens"], r[key]) for r in records if key in r]
            series[label] = ([p[0] for p in pts], [p[1] for p in pts])
        plot_lines(self.run_dir / "loss.png", series, title="GPT loss", xlabel="tokens seen",
                   ylabel="loss (nats/token)")

    def run(self) -> dict:
        """Train to train.max_steps (or until interrupted). Returns the last evaluation's metrics."""
        cfg, tc = self.cfg, self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        progress = Progress(tc.max_steps, tc.progress)
        self._check_disk()
        for path in checkpoint.set_aside_partial(self.run_dir):
            progress.print(f"moved an unfinished checkpoint (the last run was killed while saving it) to {path}")
        ckpt = checkpoint.Checkpointer(self.run_dir, tc.keep_checkpoints)
        try:
            state, meta = self._restore_or_init(ckpt, progress)
            self._truncate_metrics(int(state.step))
            config_lib.save_json(cfg, self.run_dir / checkpoint.CONFIG_FILE)
            (self.run_dir / checkpoint.TOKENIZER_FILE).write_text(json.dumps(self.data.tokenizer_meta))
            progress.print(f"model: {format_count(self.n_params)} parameters, {cfg.model.n_layer} layers, "
                           f"context {cfg.model.block_size}, vocab {cfg.model.vocab_size}; data: "
                           f"{format_count(len(self.data.train))} train tokens; devices: {dict(self.mesh.shape)}")
            state, last = self._loop(state, meta, ckpt, progress)
        finally:
            ckpt.wait()  # an asynchronous save in flight must land, even when the run fails
            ckpt.close()
        if (self.run_dir / "metrics.jsonl").exists():
            self._plot()
        if int(state.step) >= tc.max_steps:
            text = self.sample(state.params, tc.seed, tokens=max(tc.sample_tokens, 1))
            self._log_sample(int(state.step), text, progress, "final sample")
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

    def _loop(self, state, meta: dict, ckpt: checkpoint.Checkpointer, progress: Progress):
        tc = self.cfg.train
        start = int(state.step)
        peak, fpt = peak_flops(), flops_per_token(self.cfg.model, self.n_params)
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
                    self._write_metrics({"step": done, "tokens": tokens, "loss": float(m["loss"]),
                                         "grad_norm": float(m["grad_norm"]), "tokens_per_s": tps,
                                         **({"skipped": skipped} if skipped else {})})
                    t0, t0_step = time.perf_counter(), done
                if done % tc.eval_interval == 0 or done == tc.max_steps:
                    last = self.evaluate(state.params)
                    best = min(last["val_loss"], meta["best_val"] or float("inf"))
                    meta = {"tokens": tokens, "best_val": best}
                    progress.print(f"step {done}: train loss {last['train_loss']:.4f}, val loss "
                                   f"{last['val_loss']:.4f}, val perplexity {last['val_perplexity']:.2f}")
                    self._write_metrics({"step": done, "tokens": tokens, **last})
                    ckpt.save(done, state, meta, last["val_loss"])
                    t0, t0_step = time.perf_counter(), done  # evaluation is not training throughput
                if tc.sample_interval and done % tc.sample_interval == 0 and done < tc.max_steps:
                    self._log_sample(done, self.sample(state.params, done), progress, f"sample at step {done}")
                    t0, t0_step = time.perf_counter(), done
                if stop.signal is not None:
                    ckpt.save(done, state, {**meta, "tokens": tokens})
                    progress.print(f"stopped by signal {stop.signal} at step {done}; checkpoint saved, "
                                   "run the same command again to resume")
                    break
        return state, last


def train(cfg: Config) -> dict:
    """Run (or resume) the training described by `cfg`; returns the last evaluation's metrics."""
    return Trainer(cfg).run()
