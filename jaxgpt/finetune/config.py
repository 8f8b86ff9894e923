"""A finetune's settings: the training settings it shares with pretraining (a `TrainConfig`, nested), where
it runs (mesh, dist), and what only a finetune has (epochs, which parameters train, the data's splits).

The command line names the shared training settings as finetunes always have (`--batch-size`,
`--learning-rate`, ...: `TRAIN_SETTINGS`); in Python, `ClassifyConfig.of(batch_size=8, epochs=2)` takes them
by the same names. `check` refuses impossible settings with the flag's name in the message.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import ClassVar

from jaxgpt.config import Config, DistConfig, MeshConfig, TrainConfig, validate
from jaxgpt.errors import UserError
from jaxgpt.finetune.crop import CROPS

TRAINABLE = ("head", "last_blocks", "all", "lora")

# The TrainConfig fields a finetune takes from its user, as --init-from, --batch-size, and so on.
TRAIN_SETTINGS = ("init_from", "out_dir", "batch_size", "grad_accum", "learning_rate", "lr_schedule", "min_lr",
                  "warmup_steps", "weight_decay", "grad_clip", "seed", "log_interval", "eval_interval",
                  "keep_checkpoints", "skip_nonfinite", "progress", "tensorboard", "profile_steps", "compile_cache")

# A finetune's training defaults; out_dir "" means out/<recipe>, eval_interval 0 once per epoch. The rest is
# fixed for every finetune: Adam's beta2 as the book's, one evaluation batch list, no samples while training.
TRAIN = TrainConfig(init_from="out/shakespeare_char", out_dir="", seed=123, batch_size=8, learning_rate=5e-5,
                    lr_schedule="constant", min_lr=0.0, warmup_steps=0, beta2=0.999, eval_interval=0, eval_steps=1,
                    sample_interval=0)


def train_defaults(**changes) -> TrainConfig:
    return dataclasses.replace(TRAIN, **changes)


@dataclass(frozen=True)
class FinetuneConfig:
    train: TrainConfig = field(default_factory=train_defaults)  # the training settings (TRAIN_SETTINGS as flags)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    data: str = ""  # the user's data file; "" means the embedded default task
    overwrite: bool = False  # start over in out_dir even if it holds a finished finetune
    epochs: int = 3  # passes over the training split
    trainable: str = "all"  # head | last_blocks | all | lora
    last_blocks: int = 1  # with trainable=last_blocks: the head, the final LayerNorm and these last blocks
    lora_rank: int = 8  # with trainable=lora: the adapters' rank
    lora_alpha: float = 16.0  # with trainable=lora: the update is scaled by alpha / rank
    dropout: float = 0.0  # the model's dropout while finetuning
    max_length: int = 0  # longest example in tokens; 0 = the longest in the data, at most the context
    truncate: bool = True  # cut examples longer than max_length (and count them); False refuses them
    crop: str = "right"  # which end of a too-long example is cut: "right" (its end), "prompt-left" (keeps the response)
    val_fraction: float = 0.1  # of the examples, after shuffling with seed
    test_fraction: float = 0.2  # of the examples, scored after training

    flat_sections: ClassVar[dict[str, tuple[str, ...]]] = {"train": TRAIN_SETTINGS}  # flags without a prefix
    flag_help: ClassVar[dict[str, str]] = {  # where a training setting means more in a finetune
        "init_from": "any model jaxgpt.store.loader.load reads: a run, a converted model, HF, OpenAI",
        "out_dir": "where the finetuned model and its reports go ('' = out/<recipe>)",
        "batch_size": "examples per optimizer step, summed over devices and accumulation",
        "eval_interval": "steps between evaluations and checkpoints; 0 = once per epoch",
        "seed": "the splits, the new head, the adapters and every batch follow from it"}

    @classmethod
    def of(cls, **settings) -> FinetuneConfig:
        """The defaults with `settings` named as the flags name them (batch_size=8 sets train.batch_size)."""
        return cls().replace(**settings)

    def replace(self, **settings) -> FinetuneConfig:
        train = {k: settings.pop(k) for k in list(settings) if k in TRAIN_SETTINGS}
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **train), **settings)

    def settings(self) -> dict:
        """The settings as task.json records them, by their flag names (compared when resuming)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("train", "mesh", "dist")}
        return {**{k: getattr(self.train, k) for k in TRAIN_SETTINGS}, **own}


# Settings added since runs were first written, with the value a run that does not record them had.
ADDED = {"crop": "right"}

# Settings a resumed finetune may change: how long it runs, what it reports, and where it runs.
RESUMABLE = frozenset({"epochs", "out_dir", "overwrite", "log_interval", "eval_interval", "keep_checkpoints",
                       "skip_nonfinite", "progress", "mesh", "dist", "max_new_tokens", "score_base", "tensorboard",
                       "profile_steps", "compile_cache"})


def _as_flags(message: str) -> str:
    """A TrainConfig message in a finetune's words: train.batch_size -> --batch-size."""
    return re.sub(r"\btrain\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-")
                  if m.group(1) in TRAIN_SETTINGS else m.group(0), message)


def check(cfg: FinetuneConfig, allowed: tuple[str, ...]) -> None:
    """Refuse impossible settings in one line, before anything is read or written."""
    positive = {"epochs": cfg.epochs, "lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
                "last_blocks": cfg.last_blocks}
    for key, value in positive.items():
        if not value > 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive, got {value}")
    if not cfg.max_length >= 0:
        raise UserError(f"--max-length must not be negative, got {cfg.max_length}")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.crop not in CROPS:
        raise UserError(f"--crop must be one of {', '.join(CROPS)}, got {cfg.crop!r}")
    if cfg.trainable not in allowed:
        raise UserError(f"--trainable must be one of {', '.join(allowed)}, got {cfg.trainable!r}")
    for key in ("val_fraction", "test_fraction"):
        if not 0 < getattr(cfg, key) < 0.5:
            raise UserError(f"--{key.replace('_', '-')} must be between 0 and 0.5")
    if cfg.train.eval_interval < 0:
        raise UserError(f"--eval-interval must not be negative, got {cfg.train.eval_interval}")
    train = dataclasses.replace(cfg.train, eval_interval=cfg.train.eval_interval or 1)  # 0: once per epoch
    try:
        validate(Config(train=train, mesh=cfg.mesh, dist=cfg.dist))
    except UserError as e:
        raise UserError(_as_flags(str(e))) from None
