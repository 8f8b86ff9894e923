"""What both finetuning recipes share: settings, the pretrained base, trainable/frozen partitions, LoRA,
the jitted steps and the epoch loop with its outputs.

Parameters live in one tree, `{"gpt": <GPT params>, "head": ...}`, split by a predicate on paths into a
trainable part and a frozen part. Gradients and optimizer state exist for the trainable part only; with
LoRA it is the adapters (`"lora"`) plus any new head, and the GPT weights are never copied into the
optimizer. `forward` puts the two parts back together for each call.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxgpt import convert, lora, sharding
from jaxgpt.config import ModelConfig
from jaxgpt.errors import UserError
from jaxgpt.model import GPT
from jaxgpt.optim import decay_mask
from jaxgpt.tokenizer import Tokenizer, tokenizer_from_meta

TRAINABLE = ("head", "last_blocks", "all", "lora")


@dataclass(frozen=True)
class FinetuneConfig:
    init_from: str = "out/shakespeare_char"  # a jaxgpt run, a converted model, or an HF/OpenAI GPT-2 directory
    data: str = ""  # the user's data file; "" means the embedded default task
    out_dir: str = ""  # where the finetuned model and its reports go ("" = out/<recipe>)
    overwrite: bool = False  # replace out_dir if it holds an earlier finetune
    epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.1
    seed: int = 123
    trainable: str = "all"  # head | last_blocks | all | lora
    last_blocks: int = 1  # with trainable=last_blocks: the head, the final LayerNorm and these last blocks
    lora_rank: int = 8
    lora_alpha: float = 16.0
    dropout: float = 0.0
    max_length: int = 0  # longest example in tokens; 0 = the longest in the data, at most the context
    truncate: bool = True  # cut examples longer than max_length (and count them); False refuses them
    val_fraction: float = 0.1  # of the examples, after shuffling with seed
    test_fraction: float = 0.2


def add_arguments(parser, cls: type) -> None:
    """One `--field-name` option per dataclass field, typed from its annotation, defaulting to None."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                help=f"(default {'yes' if f.default else 'no'})")
        else:
            parser.add_argument(flag, dest=f.name, type=tp, default=None, help=f"(default {f.default!r})")


def from_arguments(cls: type, args, **defaults):
    """The dataclass with every option the user gave; `defaults` replace the class defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**{**defaults, **given})


def check(cfg: FinetuneConfig, default_out: str, allowed: tuple[str, ...] = TRAINABLE) -> Path:
    """Refuse impossible settings and an existing out_dir (unless --overwrite); returns the out_dir."""
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
                "lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "last_blocks": cfg.last_blocks}
    for key, value in positive.items():
        if not value > 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive, got {value}")
    if cfg.max_length < 0 or cfg.weight_decay < 0 or not 0 <= cfg.dropout < 1:
        raise UserError("--max-length and --weight-decay must not be negative, --dropout must be in [0, 1)")
    if cfg.trainable not in allowed:
        raise UserError(f"--trainable must be one of {', '.join(allowed)}, got {cfg.trainable!r}")
    for key in ("val_fraction", "test_fraction"):
        if not 0 < getattr(cfg, key) < 0.5:
            raise UserError(f"--{key.replace('_', '-')} must be between 0 and 0.5")
    out_dir = Path(cfg.out_dir or default_out)
    if out_dir.exists() and not cfg.overwrite:
        raise UserError(f"{out_dir} already exists; choose another --out-dir or pass --overwrite")
    return out_dir


def load_base(cfg: FinetuneConfig) -> tuple[ModelConfig, dict, Tokenizer]:
    """The pretrained GPT to finetune (its dropout set from cfg) and its tokenizer."""
    model_cfg, params = convert.load_pretrained(cfg.init_from)
    meta = convert.read_tokenizer_meta(cfg.init_from)
    if meta is None:
        raise UserError(f"{cfg.init_from} does not say which tokenizer its model uses; convert it with a "
                        "known tokenizer or train one with train.py")
    return dataclasses.replace(model_cfg, dropout=cfg.dropout), params, tokenizer_from_meta(meta)


def trainable_predicate(cfg: FinetuneConfig, n_layer: int) -> Callable[[tuple[str, ...]], bool]:
    """Whether the parameter at a path of {"gpt": ..., "head": ...} is trained."""
    if cfg.last_blocks > n_layer:
        raise UserError(f"--last-blocks={cfg.last_blocks} but the model has {n_layer} blocks")
    last = {f"h_{i}" for i in range(n_layer - cfg.last_blocks, n_layer)}
    return {
        "head": lambda p: p[0] == "head",
        "last_blocks": lambda p: p[0] == "head" or p[1] == "ln_f" or p[1] in last,
        "all": lambda p: True,
        "lora": lambda p: p[0] == "head",
    }[cfg.trainable]


def partition(tree: dict, predicate) -> tuple[dict, dict]:
    flat = traverse_util.flatten_dict(tree)
    yes = {k: v for k, v in flat.items() if predicate(k)}
    no = {k: v for k, v in flat.items() if not predicate(k)}
    return traverse_util.unflatten_dict(yes), traverse_util.unflatten_dict(no)


def combine(a: dict, b: dict) -> dict:
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(a), **traverse_util.flatten_dict(b)})


@dataclass(frozen=True)
class Model:
    """The GPT, and the LoRA settings when adapters are trained."""

    gpt: GPT
    lora: lora.LoraConfig | None = None

    def forward(self, trainable: dict, frozen: dict, tokens, *, deterministic: bool = True, rngs=None,
                method=None):
        """Apply the GPT (with adapters if any) to tokens; returns (output, full params tree)."""
        full = combine(trainable, frozen)
        adapters = full.pop("lora", None)
        kwargs = dict(deterministic=deterministic, rngs=rngs, method=method)
        if adapters is None:
            return self.gpt.apply({"params": full["gpt"]}, tokens, **kwargs), full
        return lora.apply(self.gpt, full["gpt"], adapters, self.lora, tokens, **kwargs), full

    def merged(self, trainable: dict, frozen: dict) -> dict:
        """The full tree with adapters merged into the GPT kernels: what gets saved."""
        full = combine(trainable, frozen)
        adapters = full.pop("lora", None)
        if adapters is not None:
            full["gpt"] = lora.merge(full["gpt"], adapters, self.lora)
        return full


def split_params(cfg: FinetuneConfig, model_cfg: ModelConfig, full: dict) -> tuple[Model, dict, dict]:
    """(model, trainable, frozen) for the chosen trainable parts."""
    trainable, frozen = partition(full, trainable_predicate(cfg, model_cfg.n_layer))
    lora_cfg = None
    if cfg.trainable == "lora":
        lora_cfg = lora.LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        trainable["lora"] = lora.init_adapters(full["gpt"], lora_cfg, jax.random.key(cfg.seed))
    return Model(GPT(model_cfg), lora_cfg), trainable, frozen


class State(flax.struct.PyTreeNode):
    step: jax.Array
    params: dict  # the trainable part only
    opt_state: optax.OptState


BatchLoss = Callable[..., tuple[jax.Array, dict]]  # (trainable, frozen, batch, dropout key | None)


class Steps:
    """The jitted train and evaluation steps of one recipe, on a data-parallel mesh."""

    def __init__(self, batch_loss: BatchLoss, cfg: FinetuneConfig, trainable: dict, frozen: dict):
        self.mesh = sharding.make_mesh()
        sharding.check_batch(self.mesh, cfg.batch_size)
        self.tx = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay, mask=decay_mask)
        repl = sharding.replicated(self.mesh)
        self.batch_sharding = sharding.eval_batch_sharding(self.mesh)  # (B, T): B over the batch axes
        self.state = jax.jit(lambda p: State(jnp.zeros((), jnp.int32), p, self.tx.init(p)), out_shardings=repl)(
            trainable)
        self.frozen = jax.device_put(frozen, repl)
        seed = cfg.seed

        def train(state: State, frozen, batch):
            key = jax.random.fold_in(jax.random.key(seed), state.step)
            (_, sums), grads = jax.value_and_grad(batch_loss, has_aux=True)(state.params, frozen, batch, key)
            updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
            return State(state.step + 1, optax.apply_updates(state.params, updates), opt_state), sums

        self._train = jax.jit(train, out_shardings=(repl, repl), donate_argnums=0)
        self._eval = jax.jit(lambda p, frozen, batch: batch_loss(p, frozen, batch, None)[1], out_shardings=repl)

    def put(self, batch: tuple[np.ndarray, ...]):
        return tuple(jax.device_put(b, self.batch_sharding) for b in batch)

    def train(self, batch) -> dict:
        self.state, sums = self._train(self.state, self.frozen, self.put(batch))
        return sums

    def evaluate(self, batches: Iterable) -> dict[str, float]:
        """Summed metrics over batches (host floats)."""
        sums = [self._eval(self.state.params, self.frozen, self.put(b)) for b in batches]
        return {k: float(sum(np.asarray(s[k]) for s in sums)) for k in sums[0]} if sums else {}


def batches(n: int, batch_size: int, seed: int | None, drop_last: bool) -> list[np.ndarray]:
    """Index arrays of each batch of n examples (shuffled with seed unless None)."""
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    stop = n - n % batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def fit(steps: Steps, cfg: FinetuneConfig, train_batches: Callable[[int], Iterable],
        val_batches: Callable[[], Iterable], summarize: Callable[[dict], dict], log: Callable[[str], None],
        metrics_path: Path) -> list[dict]:
    """Train for cfg.epochs, evaluating on validation after each; metrics go to metrics_path (JSON lines)."""
    history = []
    for epoch in range(1, cfg.epochs + 1):
        sums = [steps.train(b) for b in train_batches(epoch)]
        if not sums:
            raise UserError(f"the training split has fewer than --batch-size={cfg.batch_size} examples; "
                            "lower --batch-size or add data")
        train = summarize({k: float(sum(np.asarray(s[k]) for s in sums)) for k in sums[0]})
        val = summarize(steps.evaluate(val_batches()))
        record = {"epoch": epoch, "step": int(steps.state.step), **{f"train_{k}": v for k, v in train.items()},
                  **{f"val_{k}": v for k, v in val.items()}}
        history.append(record)
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)))
    return history


def plot_history(history: list[dict], path: Path, key: str, title: str, ylabel: str) -> None:
    from jaxgpt.plot import plot_lines

    epochs = [r["epoch"] for r in history]
    plot_lines(path, {split: (epochs, [r[f"{split}_{key}"] for r in history]) for split in ("train", "val")},
               title=title, xlabel="epoch", ylabel=ylabel)


def unique_path(path: Path) -> Path:
    """`path`, or the first of path-1, path-2, ... (before the suffix) that does not exist yet."""
    candidate, i = path, 0
    while candidate.exists():
        i += 1
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
    return candidate
