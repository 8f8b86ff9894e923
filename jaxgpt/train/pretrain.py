"""Pretraining: the task that trains a GPT on a corpus, on the engine every finetune shares.

`Trainer(cfg)` resolves the config (the vocabulary from the data's tokenizer, the shape of a pretrained
`train.init_from`, the attention kernel and dtype checks, decided once), builds the engine, and `run()`
trains. Its outputs in `train.out_dir`: config.json, tokenizer.json, task.json, checkpoints/, metrics.jsonl,
loss.png and samples.txt. Rerunning on the same directory resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxgpt import config as config_lib
from jaxgpt import runtime
from jaxgpt.config import ARCHITECTURE, Config, ModelConfig
from jaxgpt.data import dataset
from jaxgpt.errors import UserError
from jaxgpt.eval.hellaswag import hellaswag, read_hellaswag
from jaxgpt.model import gpt, objectives
from jaxgpt.model.gpt import GPT
from jaxgpt.model.sampling import generate
from jaxgpt.store.loader import fit_context, load_pretrained, read_config, read_tokenizer_meta
from jaxgpt.store.rundir import RunDir
from jaxgpt.tokenizer.kinds import Tokenizer, unknown_characters
from jaxgpt.train import sharding
from jaxgpt.train.engine import Engine
from jaxgpt.train.task import Task

EVAL_SEED_OFFSET = 1_000_003  # evaluation batches use their own, fixed stream of windows


def _adopt_pretrained(cfg: Config, tokenizer_meta: dict, vocab_size: int) -> Config:
    """Take the model's shape from `train.init_from`, after checking it fits the data and the context."""
    src = cfg.train.init_from
    pre, pre_tok = read_config(src), read_tokenizer_meta(src)
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
    shape = {f: getattr(pre, f) for f in ARCHITECTURE}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **shape))


def resolve(cfg: Config, prepared: dataset.TokenData, micro_batch: int) -> tuple[Config, ModelConfig]:
    """What the data, `train.init_from` and this backend decide, once: the vocabulary (or the pretrained
    model's shape), then the attention kernel. Returns the run's config (as config.json records it, its
    attention setting as given) and the model config the model runs with. Refused in one line when a split
    has no shard long enough for one window."""
    tokenizer = prepared.tokenizer
    if cfg.train.init_from:  # the pretrained model fixes the shape; dropout, dtypes and context stay ours
        cfg = _adopt_pretrained(cfg, prepared.tokenizer_meta, tokenizer.vocab_size)
    else:  # the vocabulary belongs to the data: the output layer is sized from the tokenizer
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size))
    for split, name in (("train", "train"), ("val", "validation")):
        longest = max((len(s) for s in prepared.splits[split]), default=0)
        if longest < cfg.model.block_size + 1:
            raise UserError(f"the {name} split has {prepared.count(split)} tokens (its longest shard {longest}) but "
                            f"one window needs {cfg.model.block_size + 1}; lower model.block_size or use a longer "
                            "corpus")
    return cfg, gpt.for_backend(cfg.model, micro_batch)


def prompt_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The prompt's token ids; one that encodes to nothing starts a new document (end-of-text) if it can."""
    try:
        ids = tokenizer.encode(text)
    except UserError as e:
        raise UserError(f"train.sample_prompt cannot be encoded ({e}); set --train.sample_prompt= to text "
                        "made of the corpus's characters") from None
    if ids or tokenizer.eot_id is not None:
        return ids or [tokenizer.eot_id]
    raise UserError(f"train.sample_prompt {text!r} encodes to no tokens with the {tokenizer.name} "
                    "tokenizer; set --train.sample_prompt= to some text of the corpus")


class Pretrain(Task):
    """Next-token prediction on random windows of a prepared corpus."""

    name = "pretrain"
    plot_x = "tokens"

    def __init__(self, cfg: Config, prepared: dataset.TokenData, model: GPT, micro_batch: int, hellaswag=()):
        self.cfg, self.data, self.model, self.micro_batch = cfg, prepared, model, micro_batch
        self.tokenizer = prepared.tokenizer
        self.files = RunDir(cfg.train.out_dir, runtime.is_primary())
        self.summary = f"data: {prepared.summary}"
        self.hellaswag = list(hellaswag)
        if self.hellaswag:  # checked now, not at the first evaluation
            unknown = unknown_characters(self.tokenizer, (t for e in self.hellaswag for t in (e.ctx, *e.endings)))
            if unknown:
                raise UserError(f"{cfg.train.hellaswag} has characters the {self.tokenizer.name} tokenizer does not "
                                f"know ({unknown[:5]}); HellaSwag needs a tokenizer for any text, e.g. gpt2")
            self.plots = (("hellaswag.png", "acc_norm", "HellaSwag accuracy (mean log-likelihood per token)",
                           "accuracy"),)

    def batch(self, step: int) -> tuple:
        """Windows of shape (grad_accum, micro_batch, T + 1) from every training shard; the global batch
        depends only on (seed, step), never on the number of processes."""
        tc, T = self.cfg.train, self.cfg.model.block_size
        return (dataset.batch_windows(self.data.train, (tc.grad_accum, self.micro_batch), T, tc.seed, step),)

    def batch_tokens(self, batch: tuple) -> int:
        return int(np.prod(batch[0].shape[:-1])) * self.cfg.model.block_size

    def eval_sets(self) -> dict[str, list[tuple]]:
        """`eval_steps` fixed batches of each split (the same batches every time)."""
        tc, T = self.cfg.train, self.cfg.model.block_size
        return {name: [(dataset.batch_windows(self.data.splits[name], (self.micro_batch,), T,
                                             tc.seed + EVAL_SEED_OFFSET, i),) for i in range(tc.eval_steps)]
                for name in ("train", "val")}

    def summarize(self, metrics: dict) -> dict:
        return {**metrics, "val_perplexity": float(np.exp(metrics["val_loss"]))}

    def extra_eval(self, engine, state, frozen) -> dict:
        if not self.hellaswag:
            return {}
        r = hellaswag(self.model, state.params, self.tokenizer, self.hellaswag, batch_size=self.micro_batch)
        return {f"hellaswag_{k}": r[k] for k in ("acc", "acc_norm", "acc_norm_char")}

    def sample(self, params, seed: int, prompt: str | None = None, tokens: int | None = None) -> str:
        tc = self.cfg.train
        ids = prompt_ids(self.tokenizer, tc.sample_prompt if prompt is None else prompt)
        out = generate(self.model, params, ids, tokens or tc.sample_tokens, key=jax.random.key(seed),
                       temperature=0.8, top_k=40, eot_id=self.tokenizer.eot_id)
        return self.tokenizer.decode(out[0].tolist())

    def after_step(self, engine, state, frozen, step: int) -> bool:
        tc = self.cfg.train
        if not (tc.sample_interval and step % tc.sample_interval == 0 and step < tc.max_steps):
            return False
        text = self.sample(state.params, step)
        self.files.log_sample(step, text, engine.progress, f"sample at step {step}")
        engine.board.text("sample", text, step)
        return True

    def finish(self, engine, state, frozen):
        text = self.sample(state.params, self.cfg.train.seed, tokens=max(self.cfg.train.sample_tokens, 1))
        self.files.log_sample(int(state.step), text, engine.progress, "final sample")
        engine.board.text("sample", text, int(state.step))


class Trainer:
    """One pretraining run: `Trainer(cfg)` resolves and builds, `run()` trains to `train.max_steps`.

    `devices` (default: all of them, across every process) is the set the mesh is laid over.
    """

    def __init__(self, cfg: Config, devices=None):
        cfg = config_lib.validate(cfg)
        runtime.start(cfg.dist, cfg.train.compile_cache, cfg.train.tensorboard)  # before any device is touched
        tc = cfg.train
        RunDir.check_path(tc.out_dir)  # what can be refused is refused before the data is prepared
        sharding.check_batch(sharding.make_mesh(cfg.mesh, devices), tc.batch_size // tc.grad_accum)
        hellaswag = ()
        if tc.hellaswag:
            hellaswag = read_hellaswag(tc.hellaswag, tc.hellaswag_limit)
        if not runtime.is_primary():  # process 0 prepares the shared token files first; the others then read them
            runtime.barrier("jaxgpt:prepare")
        self.data = dataset.open_data(cfg.data.source, cfg.data.tokenizer, cfg.data.cache_dir, cfg.data.val_fraction)
        if runtime.is_primary():
            runtime.barrier("jaxgpt:prepare")
        prompt_ids(self.data.tokenizer, tc.sample_prompt)  # an unusable prompt is found now, not after training
        self.cfg, model_cfg = resolve(cfg, self.data, tc.batch_size // tc.grad_accum)
        self.model = GPT(model_cfg)
        self.engine = Engine(self.cfg, self.model, objectives.language_model(self.model), devices=devices)
        self.task = Pretrain(self.cfg, self.data, self.model, self.engine.micro_batch, hellaswag)
        self.engine.check_run_dir(tc.out_dir, self.task, self.data.tokenizer_meta)

    def pretrained(self) -> dict:
        """The weights of `train.init_from`, cut to our context, on the host (placed shard by shard later)."""
        src, m = self.cfg.train.init_from, self.cfg.model
        _, params = load_pretrained(src)
        self.engine.progress.print(f"initialised from {src}: {m.n_layer} layers, {m.n_head} heads, width {m.n_embd}, "
                                   f"vocab {m.vocab_size}, context {m.block_size}")
        return fit_context(params, m.block_size, m.param_dtype)

    def run(self) -> dict:
        """Train to train.max_steps (or until interrupted). Returns the last evaluation's metrics."""
        tc = self.cfg.train
        given = self.pretrained if tc.init_from else None
        self.engine.run(self.task, tc.out_dir, self.data.tokenizer_meta, given=given, progress=tc.progress)
        return self.engine.last_eval


def train(cfg: Config) -> dict:
    """Run (or resume) the training described by `cfg`; returns the last evaluation's metrics."""
    return Trainer(cfg).run()
