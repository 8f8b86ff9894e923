"""One loader for every kind of model directory: `load(path, step=None)`.

Kinds (`detect`):
- "jaxgpt": config.json + checkpoints/. A pretraining run (at any of its steps), a converted model, or a
  finetune (classifier, instruction or preference model), whose `task.json` says which model it is and
  whose `frozen/` holds the weights it did not train; LoRA adapters are merged into the kernels on load.
- "hf": a Hugging Face GPT-2 directory; "openai": OpenAI's TensorFlow release (see convert.py).

`sample`, `convert`, `classify`, `chat`, `train.init_from` and the finetunes all read models through it
(it is `jaxgpt.load`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from jaxgpt.config import Config, ModelConfig
from jaxgpt.errors import UserError
from jaxgpt.model.gpt import GPT, GPTClassifier
from jaxgpt.model.lora import LoraConfig
from jaxgpt.model.parts import combine, merged
from jaxgpt.store import checkpoint, convert, decoders
from jaxgpt.store.rundir import RunDir
from jaxgpt.tokenizer.hf import hf_tokenizer_files, is_hf_folder, load_hf_tokenizer
from jaxgpt.tokenizer.kinds import GPT2Tokenizer, Tokenizer, tokenizer_from_meta

JAXGPT, HF, OPENAI = convert.JAXGPT, convert.HF, convert.OPENAI


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A model read from a directory: everything needed to run it."""

    path: Path
    kind: str  # "jaxgpt", "hf" or "openai"
    config: ModelConfig  # the GPT's shape and numerics
    params: dict  # the full tree of `module`: a GPT's, or a classifier's {"gpt": ..., "head": ...}
    tokenizer_meta: dict | None  # None when the directory does not say (a converted model of unknown origin)
    step: int  # the checkpoint read (0 for Hugging Face, OpenAI and converted models)
    task: dict | None = None  # a finetune's task.json: {"task": "classify", "labels": [...], ...}
    run_config: Config | None = None  # a jaxgpt directory's config.json

    @property
    def module(self) -> nn.Module:
        if self.task and self.task.get("task") == "classify":
            return GPTClassifier(self.config, len(self.task["labels"]))
        return GPT(self.config)

    @property
    def gpt_params(self) -> dict:
        """The language model's parameters (a classifier's backbone)."""
        return self.params["gpt"] if "gpt" in self.params else self.params

    def tokenizer(self, needed_for: str = "turn text into tokens") -> Tokenizer:
        if self.tokenizer_meta is None:
            raise UserError(f"{self.path} does not say which tokenizer its model uses (no tokenizer.json), so "
                            f"it cannot {needed_for}; convert it with a known tokenizer or train one with train.py")
        return tokenizer_from_meta(self.tokenizer_meta)


def detect(path: str | Path) -> str:
    """'jaxgpt', 'hf' or 'openai' for a model directory; a UserError for anything else."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist; pass a model directory: a jaxgpt run or converted model, or a "
                        "Hugging Face or OpenAI GPT-2 download")
    if not p.is_dir():
        raise UserError(f"{p} is a file; pass the directory that holds the model's files")
    if RunDir(p).has_checkpoints():
        return JAXGPT
    if (p / "config.json").is_file() and any((p / f).is_file() for f in convert.HF_WEIGHTS):
        return HF
    if (p / "hparams.json").is_file():
        if convert.tf_prefix(p) is None:
            raise UserError(f"{p} has hparams.json but not exactly one model.ckpt.index; download OpenAI's "
                            "hparams.json, model.ckpt.index and model.ckpt.data-00000-of-00001 into it")
        return OPENAI
    raise UserError(f"{p} is neither a Hugging Face GPT-2 directory (config.json + model.safetensors), "
                    "OpenAI's release (hparams.json + model.ckpt.*) nor a jaxgpt run (config.json + checkpoints/)")


def _is_decoder(p: Path) -> bool:
    """Whether a Hugging Face directory holds a Llama or Qwen3 (else GPT-2)."""
    return decoders.is_decoder_config(convert.read_json_object(p / "config.json", "download it again"))


def read_config(path: str | Path) -> ModelConfig:
    """The GPT config of any kind of model directory, without reading its weights."""
    p, kind = Path(path), detect(path)
    if kind == HF:
        return decoders.model_config(p / "config.json") if _is_decoder(p) else convert.hf_model_config(p)
    if kind == OPENAI:
        return convert.openai_model_config(p)
    return RunDir(p).read_config().model


def read_tokenizer_meta(path: str | Path) -> dict | None:
    """The tokenizer a model directory was trained with: saved metadata, else GPT-2's BPE for a
    vocabulary of 50,257 or more (OpenAI's and HF's GPT-2), else None (unknown)."""
    p, kind = Path(path), detect(path)
    if kind == JAXGPT and (saved := RunDir(p).read_tokenizer()) is not None:
        return saved
    if kind == HF and (p / convert.TOKENIZER_COPY).is_file():
        return convert.read_json_object(p / convert.TOKENIZER_COPY, "download it again")
    if kind == HF and _is_decoder(p):  # Llama and Qwen3 come with their own tokenizer.json
        return load_hf_tokenizer(p).meta() if is_hf_folder(p) else None
    if read_config(p).vocab_size >= 50257:
        return GPT2Tokenizer().meta()
    return None


def _read_jaxgpt(p: Path, step: int | None):
    run = RunDir(p)
    cfg = run.read_config()
    steps = checkpoint.checkpoint_steps(p)
    if cfg is None or not steps:
        raise UserError(f"{p} holds no checkpoint (no {run.config.name} or {run.checkpoints.name}/); "
                        "train one with `python train.py --train.out_dir=...` first")
    step = max(steps) if step is None else step
    if step not in steps:
        raise UserError(f"{p} has no checkpoint at step {step}; it has {sorted(steps)}")
    task = run.read_task()
    params = checkpoint.restore_params(p, step)
    if run.frozen.is_dir():  # a finetune: the weights it did not train are kept once
        params = combine(params, checkpoint.restore_tree(run.frozen))
    lora = task.get("lora") if task else None
    params = merged(params, LoraConfig(lora["rank"], lora["alpha"], tuple(lora["targets"])) if lora else None)
    return cfg, params, task, step


def load(path: str | Path, step: int | None = None) -> Loaded:
    """Read the model in `path` (any kind, see `detect`); `step` picks a jaxgpt run's checkpoint (default:
    the latest). Parameters land on the first local device (NumPy arrays for HF/OpenAI weights)."""
    p, kind = Path(path), detect(path)
    run_cfg = task = None
    if kind == JAXGPT:
        run_cfg, params, task, step = _read_jaxgpt(p, step)
        model_cfg = run_cfg.model
    else:
        read = (decoders.read if _is_decoder(p) else convert.read_hf) if kind == HF else convert.read_openai
        model_cfg, params = read(p)
        step = 0
    return Loaded(p, kind, model_cfg, params, read_tokenizer_meta(p), step, task, run_cfg)


def load_pretrained(path: str | Path, step: int | None = None) -> tuple[ModelConfig, dict]:
    """(config, GPT params) of any model directory, ready for `GPT(config).apply`."""
    model = load(path, step)
    return model.config, model.gpt_params


def fit_context(params: dict, block_size: int, dtype: str) -> dict:
    """GPT params cut to a context of `block_size` positions (the position table's first rows) and cast to
    `dtype` on the host, ready to be placed shard by shard."""
    if "wpe" in params:  # rotary positions have no table
        params = {**params, "wpe": {"embedding": params["wpe"]["embedding"][:block_size]}}
    return jax.tree.map(lambda a: np.asarray(a, jax.numpy.dtype(dtype)), params)


def convert_model(src: str | Path, dst: str | Path, to: str | None = None, overwrite: bool = False,
            step: int | None = None) -> str:
    """Convert the model directory `src` into `dst` (`to`: 'jaxgpt' or 'hf'; default: jaxgpt, or hf for a
    jaxgpt source). Nothing is written unless the whole conversion succeeds. Returns a summary line."""
    kind = detect(src)
    to = to or (HF if kind == JAXGPT else JAXGPT)
    if to not in (HF, JAXGPT):
        raise UserError(f"cannot convert to {to!r}; choose 'jaxgpt' or 'hf'")
    if Path(dst).exists() and not overwrite:
        raise UserError(f"{dst} already exists; choose a new destination or pass --overwrite to replace it")
    model = load(src, step)
    cfg, params, tok = model.config, model.gpt_params, model.tokenizer_meta
    if to == HF and not convert.is_gpt2(cfg):
        decoders.save(cfg, params, dst, hf_tokenizer_files(tok) if tok and tok.get("kind") == "hf" else None, overwrite)
    elif to == HF:
        convert.save_hf(cfg, params, dst, tok, overwrite)
    else:
        convert.save_jaxgpt(cfg, params, dst, tok, f"{kind}:{Path(src).resolve()}", overwrite)
    n = sum(int(np.prod(s)) for s in convert.param_shapes(cfg).values())
    return f"converted {kind} {src} -> {to} {dst}: {convert.describe(cfg)}, {n:,} parameters"
