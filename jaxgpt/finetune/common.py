"""What every finetune shares: its settings and command-line options, the output folder's life cycle, the
pretrained base, epochs as engine steps, and the run on the training engine.

A finetune is a `Finetune` task (engine.py) over a list of examples: steps are batches of a fresh shuffle
per epoch, so step `i`'s batch depends only on the seed and `i`, and a killed finetune resumes exactly. Its
output folder is an engine run directory (config.json, task.json, checkpoints/, frozen/, metrics.jsonl,
plots) that also receives the task's results at the end and is read back by `jaxgpt.store.loader.load`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxgpt import runtime
from jaxgpt.model import gpt
from jaxgpt.config import Config, DataConfig, DistConfig, MeshConfig, TrainConfig, validate
from jaxgpt.train.engine import Engine, Task
from jaxgpt.store.rundir import read_task
from jaxgpt.errors import UserError
from jaxgpt.files import OUTPUT_MARKER, write_json
from jaxgpt.model.lora import LoraConfig
from jaxgpt.model.parts import Parts
from jaxgpt.store.loader import fit_context, load_pretrained
from jaxgpt.store.loader import read_config, read_tokenizer_meta
from jaxgpt.tokenizer.kinds import tokenizer_from_meta

RESULTS_FILE = "results.json"  # written last: a folder with it holds a finished finetune
TRAINABLE = ("head", "last_blocks", "all", "lora")


@dataclass(frozen=True)
class FinetuneConfig:
    init_from: str = "out/shakespeare_char"  # any model jaxgpt.store.loader.load reads: a run, a converted model, HF, OpenAI
    data: str = ""  # the user's data file; "" means the embedded default task
    out_dir: str = ""  # where the finetuned model and its reports go ("" = out/<recipe>)
    overwrite: bool = False  # start over in out_dir even if it holds a finished finetune
    epochs: int = 3  # passes over the training split
    batch_size: int = 8  # examples per optimizer step, summed over devices and accumulation
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 5e-5  # AdamW's (after the warmup)
    lr_schedule: str = "constant"  # "constant" after the warmup, or "cosine" decay to min_lr
    min_lr: float = 0.0  # with lr_schedule=cosine
    warmup_steps: int = 0  # linear warmup from 0
    weight_decay: float = 0.1  # on weight matrices only
    grad_clip: float = 1.0  # global-norm clipping; 0 turns it off
    seed: int = 123  # the splits, the new head, the adapters and every batch follow from it
    trainable: str = "all"  # head | last_blocks | all | lora
    last_blocks: int = 1  # with trainable=last_blocks: the head, the final LayerNorm and these last blocks
    lora_rank: int = 8  # with trainable=lora: the adapters' rank
    lora_alpha: float = 16.0  # with trainable=lora: the update is scaled by alpha / rank
    dropout: float = 0.0  # the model's dropout while finetuning
    max_length: int = 0  # longest example in tokens; 0 = the longest in the data, at most the context
    truncate: bool = True  # cut examples longer than max_length (and count them); False refuses them
    val_fraction: float = 0.1  # of the examples, after shuffling with seed
    test_fraction: float = 0.2  # of the examples, scored after training
    log_interval: int = 10  # steps between progress lines and metrics.jsonl records
    eval_interval: int = 0  # steps between evaluations and checkpoints; 0 = once per epoch
    keep_checkpoints: int = 2  # latest N kept, plus the best by validation loss
    skip_nonfinite: bool = False  # skip (and count) updates with a NaN/inf loss or gradient instead of stopping
    progress: bool = True  # one updating progress line on a terminal
    tensorboard: bool = False  # also write TensorBoard event files into out_dir/tensorboard (needs jaxgpt[tensorboard])
    profile_steps: str = ""  # "A:B": record a jax.profiler trace of steps A to B into out_dir/profile
    compile_cache: str = "auto"  # JAX's persistent compilation cache: "auto", a folder, or "" (off)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# Settings a resumed finetune may change: how long it runs, what it reports, and where it runs.
RESUMABLE = frozenset({"epochs", "out_dir", "overwrite", "log_interval", "eval_interval", "keep_checkpoints",
                       "skip_nonfinite", "progress", "mesh", "dist", "max_new_tokens", "score_base", "tensorboard",
                       "profile_steps", "compile_cache"})


def check(cfg: FinetuneConfig, allowed: tuple[str, ...]) -> None:
    """Refuse impossible settings in one line, before anything is read or written; then join the other
    processes of a multi-process run (before anything touches a device)."""
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
                "lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "last_blocks": cfg.last_blocks,
                "grad_accum": cfg.grad_accum, "log_interval": cfg.log_interval,
                "keep_checkpoints": cfg.keep_checkpoints}
    for key, value in positive.items():
        if not value > 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive, got {value}")
    non_negative = {"max_length": cfg.max_length, "weight_decay": cfg.weight_decay, "warmup_steps": cfg.warmup_steps,
                    "grad_clip": cfg.grad_clip, "min_lr": cfg.min_lr, "eval_interval": cfg.eval_interval}
    for key, value in non_negative.items():
        if not value >= 0:
            raise UserError(f"--{key.replace('_', '-')} must not be negative, got {value}")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.trainable not in allowed:
        raise UserError(f"--trainable must be one of {', '.join(allowed)}, got {cfg.trainable!r}")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise UserError(f"--lr-schedule must be constant or cosine, got {cfg.lr_schedule!r}")
    if cfg.batch_size % cfg.grad_accum:
        raise UserError(f"--batch-size ({cfg.batch_size}) must be divisible by --grad-accum ({cfg.grad_accum})")
    for key in ("val_fraction", "test_fraction"):
        if not 0 < getattr(cfg, key) < 0.5:
            raise UserError(f"--{key.replace('_', '-')} must be between 0 and 0.5")
    validate(Config(mesh=cfg.mesh, dist=cfg.dist, train=TrainConfig(profile_steps=cfg.profile_steps)))
    runtime.start(cfg.dist, cfg.compile_cache, cfg.tensorboard)


def out_dir(cfg: FinetuneConfig, default: str) -> Path:
    """The output folder, if the run may use it: new, or an unfinished finetune to resume, or (with
    --overwrite) an earlier jaxgpt output that `start_over` replaces. Nothing is written here."""
    path = Path(cfg.out_dir or default)
    if path.is_symlink():
        raise UserError(f"--out-dir {path} is a symbolic link; give the folder itself or a new path")
    if not path.exists():
        return path
    if not path.is_dir():
        raise UserError(f"--out-dir {path} exists and is not a folder; choose another --out-dir")
    ours = read_task(path) is not None or (path / OUTPUT_MARKER).is_file() or not any(path.iterdir())
    if not ours:
        raise UserError(f"{path} already exists and is not a jaxgpt finetune; choose another --out-dir")
    if (path / RESULTS_FILE).is_file() and not cfg.overwrite:
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
    model_cfg = read_config(cfg.init_from)
    meta = read_tokenizer_meta(cfg.init_from)
    if meta is None:
        raise UserError(f"{cfg.init_from} does not say which tokenizer its model uses; convert it with a "
                        "known tokenizer or train one with train.py")
    return dataclasses.replace(model_cfg, dropout=cfg.dropout), tokenizer_from_meta(meta)


def base_params(cfg: FinetuneConfig, model_cfg) -> dict:
    """The base GPT's weights, cast to its parameter dtype, on the host."""
    return fit_context(load_pretrained(cfg.init_from)[1], model_cfg.block_size, model_cfg.param_dtype)


def parts(cfg: FinetuneConfig) -> Parts:
    lora = LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha) if cfg.trainable == "lora" else None
    return Parts(cfg.trainable, cfg.last_blocks, lora)


def run_config(cfg: FinetuneConfig, model_cfg, tokenizer_name: str, path: Path, max_steps: int,
               steps_per_epoch: int) -> Config:
    """The engine's config of a finetune (what its config.json records)."""
    train = TrainConfig(
        out_dir=str(path), seed=cfg.seed, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, max_steps=max_steps,
        learning_rate=cfg.learning_rate, lr_schedule=cfg.lr_schedule, min_lr=cfg.min_lr,
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, beta1=0.9, beta2=0.999,
        grad_clip=cfg.grad_clip, log_interval=cfg.log_interval, eval_interval=cfg.eval_interval or steps_per_epoch,
        eval_steps=1, sample_interval=0, keep_checkpoints=cfg.keep_checkpoints, progress=cfg.progress,
        init_from=cfg.init_from, skip_nonfinite=cfg.skip_nonfinite, tensorboard=cfg.tensorboard,
        profile_steps=cfg.profile_steps, compile_cache=cfg.compile_cache)
    return validate(Config(model=model_cfg, data=DataConfig(source=cfg.data, tokenizer=tokenizer_name),
                           train=train, mesh=cfg.mesh, dist=cfg.dist))


def lora_record(cfg: FinetuneConfig) -> dict | None:
    """The LoRA settings a loader needs to merge the adapters (task.json's "lora")."""
    lora = parts(cfg).lora
    return None if lora is None else {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)}


def settings(cfg: FinetuneConfig) -> dict:
    """The finetune's settings as task.json records them (compared when resuming)."""
    d = dataclasses.asdict(cfg)
    return {k: v for k, v in d.items() if k not in ("mesh", "dist")}


class Finetune(Task):
    """A task over n training examples, `epochs` passes of batches of a fresh shuffle each.

    `make(indices)` builds a batch's host arrays (B, ...) from example indices; evaluation sets are lists
    of such batches. Subclasses set the loss, the evaluation sets and `finish`.
    """

    plot_x = "step"
    resumable = RESUMABLE

    def __init__(self, cfg: FinetuneConfig, n_train: int, make: Callable[[np.ndarray], tuple]):
        self.cfg, self.n_train, self.make = cfg, n_train, make
        self.steps_per_epoch = n_train // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"the training split has {n_train} examples, fewer than --batch-size={cfg.batch_size}; "
                            "lower --batch-size or add data")
        self.max_steps = cfg.epochs * self.steps_per_epoch
        self.settings = settings(cfg)

    def batch(self, step: int) -> tuple:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng((self.cfg.seed, epoch)).permutation(self.n_train)
        arrays = self.make(order[i * self.cfg.batch_size:(i + 1) * self.cfg.batch_size])
        return tuple(a.reshape(self.cfg.grad_accum, -1, *a.shape[1:]) for a in arrays)  # (accum, micro, ...)

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
    return engine.run(task, path, tokenizer_meta, given=given, progress=cfg.progress)


def resolved(model_cfg, cfg: FinetuneConfig):
    """The model config the model runs with on this backend (attention kernel chosen, dtype checked)."""
    return gpt.resolve(model_cfg, cfg.batch_size // cfg.grad_accum)


def evaluations(run_dir: Path) -> list[dict]:
    """The evaluation records of a run's metrics.jsonl (those with validation metrics)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
    return [r for r in map(json.loads, lines) if any(k.startswith("val_") for k in r)]


def finish(engine: Engine, results: dict, message: str) -> None:
    """Write results.json (last: it marks the finetune finished) and say where everything is."""
    if runtime.is_primary():
        (engine.run_dir / OUTPUT_MARKER).write_text("written by jaxgpt; --overwrite may replace this folder\n")
        write_json(engine.run_dir / RESULTS_FILE, results)
    engine.progress.print(f"{message}; saved to {engine.run_dir}")
