"""What every finetune shares: the output folder's life cycle, the pretrained base, epochs as engine steps,
and the run on the training engine (its settings are config.py's).

A finetune is a `Finetune` task (train/task.py) over a list of examples: steps are batches of a fresh shuffle
per epoch, so step `i`'s batch depends only on the seed and `i`, and a killed finetune resumes exactly. Its
output folder is an engine run directory (config.json, task.json, checkpoints/, frozen/, metrics.jsonl,
plots) that also receives the task's results at the end and is read back by `jaxgpt.store.loader.load`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxgpt import runtime
from jaxgpt.config import Config, DataConfig, validate
from jaxgpt.errors import UserError
from jaxgpt.finetune import config
from jaxgpt.finetune.config import FinetuneConfig
from jaxgpt.model import gpt
from jaxgpt.model.lora import LoraConfig
from jaxgpt.model.parts import Parts
from jaxgpt.store.loader import fit_context, load_pretrained, read_config, read_tokenizer_meta
from jaxgpt.store.rundir import RunDir
from jaxgpt.tokenizer.kinds import tokenizer_from_meta
from jaxgpt.train.engine import Engine
from jaxgpt.train.task import Task


def check(cfg: FinetuneConfig, allowed: tuple[str, ...]) -> None:
    """Refuse impossible settings in one line, before anything is read or written; then set up the process
    (join the other processes of a multi-process run before anything touches a device)."""
    config.check(cfg, allowed)
    runtime.start(cfg.dist, cfg.train.compile_cache, cfg.train.tensorboard)


def out_dir(cfg: FinetuneConfig, default: str) -> Path:
    """The output folder, if the run may use it: new, or an unfinished finetune to resume, or (with
    --overwrite) an earlier jaxgpt output that `start_over` replaces. Nothing is written here."""
    path = Path(cfg.train.out_dir or default)
    if path.is_symlink():
        raise UserError(f"--out-dir {path} is a symbolic link; give the folder itself or a new path")
    if not path.exists():
        return path
    if not path.is_dir():
        raise UserError(f"--out-dir {path} exists and is not a folder; choose another --out-dir")
    if not RunDir(path).is_ours():
        raise UserError(f"{path} already exists and is not a jaxgpt finetune; choose another --out-dir")
    if RunDir(path).results.is_file() and not cfg.overwrite:
        raise UserError(f"{path} already exists and holds a finished finetune; choose another --out-dir or "
                        "pass --overwrite to replace it")
    return path


def start_over(path: Path, cfg: FinetuneConfig) -> None:
    """With --overwrite, remove an earlier finetune in `path` (checked by `out_dir`) before training."""
    if cfg.overwrite and path.exists() and runtime.is_primary():
        shutil.rmtree(path)
    runtime.barrier("jaxgpt:start_over")


def base_model(cfg: FinetuneConfig):
    """(the base GPT's config with our dropout, its tokenizer) of `--init-from`, without reading weights."""
    model_cfg = read_config(cfg.train.init_from)
    meta = read_tokenizer_meta(cfg.train.init_from)
    if meta is None:
        raise UserError(f"{cfg.train.init_from} does not say which tokenizer its model uses; convert it with a "
                        "known tokenizer or train one with train.py")
    return dataclasses.replace(model_cfg, dropout=cfg.dropout), tokenizer_from_meta(meta)


def base_params(cfg: FinetuneConfig, model_cfg) -> dict:
    """The base GPT's weights, cast to its parameter dtype, on the host."""
    return fit_context(load_pretrained(cfg.train.init_from)[1], model_cfg.block_size, model_cfg.param_dtype)


def parts(cfg: FinetuneConfig) -> Parts:
    lora = LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha) if cfg.trainable == "lora" else None
    return Parts(cfg.trainable, cfg.last_blocks, lora)


def run_config(cfg: FinetuneConfig, model_cfg, tokenizer_name: str, path: Path, max_steps: int,
               steps_per_epoch: int) -> Config:
    """The engine's config of a finetune (what its config.json records)."""
    train = dataclasses.replace(cfg.train, out_dir=str(path), max_steps=max_steps,
                                eval_interval=cfg.train.eval_interval or steps_per_epoch)
    return validate(Config(model=model_cfg, data=DataConfig(source=cfg.data, tokenizer=tokenizer_name),
                           train=train, mesh=cfg.mesh, dist=cfg.dist))


def lora_record(cfg: FinetuneConfig) -> dict | None:
    """The LoRA settings a loader needs to merge the adapters (task.json's "lora")."""
    lora = parts(cfg).lora
    return None if lora is None else {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)}


class Finetune(Task):
    """A task over n training examples, `epochs` passes of batches of a fresh shuffle each.

    `make(indices)` builds a batch's host arrays (B, ...) from example indices; evaluation sets are lists
    of such batches. Subclasses set the loss, the evaluation sets and `finish`.
    """

    plot_x = "step"
    resumable = config.RESUMABLE
    added = config.ADDED

    def __init__(self, cfg: FinetuneConfig, n_train: int, make: Callable[[np.ndarray], tuple]):
        self.cfg, self.n_train, self.make = cfg, n_train, make
        self.batch_size, self.grad_accum = cfg.train.batch_size, cfg.train.grad_accum
        self.steps_per_epoch = n_train // self.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"the training split has {n_train} examples, fewer than --batch-size={self.batch_size}; "
                            "lower --batch-size or add data")
        self.max_steps = cfg.epochs * self.steps_per_epoch
        self.settings = cfg.settings()

    def batch(self, step: int) -> tuple:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng((self.cfg.train.seed, epoch)).permutation(self.n_train)
        arrays = self.make(order[i * self.batch_size:(i + 1) * self.batch_size])
        return tuple(a.reshape(self.grad_accum, -1, *a.shape[1:]) for a in arrays)  # (accum, micro, ...)

    def record(self, step: int) -> dict:
        return {"epoch": round(step / self.steps_per_epoch, 4)}

    def batches(self, n: int, micro_batch: int, make: Callable[[np.ndarray], tuple]) -> list[tuple]:
        """Evaluation batches over examples 0..n-1 in order, the last one filled by `make` to full size."""
        return [make(np.arange(i, min(i + micro_batch, n))) for i in range(0, n, micro_batch)]


def train(task: Finetune, cfg: FinetuneConfig, run_cfg: Config, model, loss_fn, path: Path, tokenizer_meta: dict,
          given: Callable[[], dict], devices=None):
    """Build the engine for `model` (on `devices`, default all) and run `task` into `path`; returns what
    task.finish returns."""
    engine = Engine(run_cfg, model, loss_fn, parts(cfg), devices)
    task.engine = engine
    if not cfg.overwrite:
        engine.check_run_dir(path, task, tokenizer_meta)
    start_over(path, cfg)
    return engine.run(task, path, tokenizer_meta, given=given, progress=cfg.train.progress)


def resolved(model_cfg, cfg: FinetuneConfig):
    """The model config the model runs with on this backend (attention kernel chosen, dtype checked)."""
    return gpt.for_backend(model_cfg, cfg.train.batch_size // cfg.train.grad_accum)


def finish(engine: Engine, results: dict, message: str) -> None:
    """Write results.json (last: it marks the finetune finished) and say where everything is."""
    RunDir(engine.run_dir, runtime.is_primary()).write_results(results)
    engine.progress.print(f"{message}; saved to {engine.run_dir}")
