"""Evaluation as the field reports it: the loss of any model on a corpus, and HellaSwag.

`corpus_loss` scores a deterministic set of windows of a token stream (a prepared dataset's split, or a
text file): non-overlapping windows of `block_size` targets by default, or, with `stride` < block_size,
windows every `stride` tokens of which only the last `stride` targets are scored (each target once, with
at least block_size - stride tokens of context; the first window scores all of its targets).

`hellaswag` scores each example's four endings by the model's log-likelihood of the ending's tokens
after the context (`ctx`; the ending prefixed by a space; a context too long for the model's window is
cropped from the left) and reports three accuracies:
- `acc`: the largest summed log-likelihood;
- `acc_norm`: the largest mean log-likelihood per token, as build-nanogpt and llm.c compute it ("completion
  style"; their published GPT-2 figures are this one);
- `acc_norm_char`: the largest log-likelihood per character of the ending, the normalisation of
  lm-evaluation-harness's acc_norm (its published figures also format the context differently).
Both run jitted in batches padded to a few shapes, through the fused head (no (B, T, vocab) logits).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from jaxgpt import loss
from jaxgpt.errors import UserError
from jaxgpt.loss import IGNORE_INDEX
from jaxgpt.model import GPT

PAD_MULTIPLE = 32  # HellaSwag batches are padded to a multiple of this many tokens: few compilations


# --- loss on a corpus -------------------------------------------------------------------------------------

def windows(n_tokens: int, block_size: int, stride: int | None = None, max_targets: int = 0) -> list[tuple]:
    """(start, a, b) of every window over a stream of n_tokens: its inputs are tokens[start : start + b],
    its targets tokens[start + 1 : start + b + 1], of which offsets a .. b - 1 are scored. Every target
    1 .. n_tokens - 1 is scored exactly once (or only the first max_targets)."""
    T, S = block_size, stride or block_size
    if not 1 <= S <= T:
        raise UserError(f"--stride must be between 1 and the block size {T}, got {S}")
    out, start, next_target, left = [], 0, 1, max_targets or n_tokens
    while next_target < n_tokens and left > 0:
        last = min(start + T, n_tokens - 1)  # the last target this window can predict
        a = next_target - start - 1  # the first target not scored yet, as an offset in this window
        b = min(last - start, a + left)
        out.append((start, a, b))
        left, next_target, start = left - (b - a), start + b + 1, start + S
    return out


class _Stream:
    """Shards read as one stream of tokens (slices may cross shard boundaries)."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards, self.ends = shards, np.cumsum([len(s) for s in shards])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def read(self, a: int, b: int) -> np.ndarray:
        parts, starts = [], np.concatenate([[0], self.ends[:-1]])
        for s, lo, hi in zip(self.shards, starts, self.ends):
            if hi > a and lo < b:
                parts.append(np.asarray(s[max(a - lo, 0):min(b - lo, hi - lo)], np.int32))
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def read_corpus(data: str, split: str, tokenizer_meta: dict | None):
    """(the token shards of `data`'s split, a description): a prepared folder (shards or the cache's
    train.bin/val.bin) or a text file tokenized with the model's tokenizer."""
    from jaxgpt.tokens import is_sharded, load_shards
    from jaxgpt.tokenizer import tokenizer_from_meta

    path = Path(data)
    if split not in ("train", "val"):
        raise UserError(f"--split must be train or val, got {split!r}")
    if path.is_dir() and (is_sharded(path) or (path / "meta.json").is_file()):
        if is_sharded(path):
            d = load_shards(path)
            meta, shards = d.tokenizer_meta, d.splits[split]
        else:
            from jaxgpt.data import load_prepared

            p = load_prepared(path)
            meta, shards = p.tokenizer_meta, [p.split(split)]
        if tokenizer_meta is not None and meta != tokenizer_meta:
            raise UserError(f"{path} was tokenized with {meta.get('kind')}, the model with "
                            f"{tokenizer_meta.get('kind')}; prepare the data with the model's tokenizer")
        return shards, f"{path} ({split})"
    if path.is_file():
        from jaxgpt.data import read_text

        if tokenizer_meta is None:
            raise UserError("the model does not say which tokenizer it uses, so a text file cannot be tokenized")
        text = read_text(path)
        ids = np.asarray(tokenizer_from_meta(tokenizer_meta).encode(text), np.int32)
        return [ids], str(path)
    raise UserError(f"--data {data} is neither a prepared dataset folder nor a text file")


def corpus_loss(model: GPT, params, shards: list[np.ndarray], block_size: int | None = None,
                stride: int | None = None, batch_size: int = 8, max_tokens: int = 0, log=None) -> dict:
    """Mean next-token loss of `params` over the windows of the concatenated shards (see `windows`)."""
    T = block_size or model.config.block_size
    if not 2 <= T <= model.config.block_size:
        raise UserError(f"--block-size must be between 2 and the model's context {model.config.block_size}, got {T}")
    if batch_size < 1 or max_tokens < 0:
        raise UserError("--batch-size must be at least 1 and --max-tokens not negative")
    stream = _Stream(shards)
    if len(stream) < 2:
        raise UserError("the data has fewer than 2 tokens: nothing to score")
    plan = windows(len(stream), T, stride, max_tokens)
    step = jax.jit(lambda p, x, y: loss.language_model(model)(p, {}, (x, y), None)[1])
    total = count = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(plan), batch_size):
        x = np.zeros((batch_size, T), np.int32)
        y = np.full((batch_size, T), IGNORE_INDEX, np.int32)
        for row, (start, a, b) in enumerate(plan[i:i + batch_size]):
            w = stream.read(start, start + b + 1)  # inputs start .. start+b-1, targets start+1 .. start+b
            x[row, :len(w) - 1], y[row, a:b] = w[:-1], w[a + 1:b + 1]
        sums = jax.device_get(step(params, x, y))
        total, count = total + float(sums["loss"]), count + float(sums["count"])
        if log and (time.perf_counter() - t0 > 1 or i + batch_size >= len(plan)):
            log(f"eval loss: {min(i + batch_size, len(plan))}/{len(plan)} windows, {total / count:.4f}",
                i + batch_size >= len(plan))
            t0 = time.perf_counter()
    mean = total / count
    return {"loss": mean, "perplexity": float(np.exp(mean)), "tokens_scored": int(count), "windows": len(plan),
            "block_size": T, "stride": stride or T,
            "window_rule": ("non-overlapping windows of block_size targets" if (stride or T) == T else
                            f"windows every {stride} tokens, each scoring only its last {stride} targets")}


# --- HellaSwag --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    ctx: str
    endings: tuple[str, ...]
    label: int
    fields: dict  # everything else the line has (ind, activity_label, source_id, ...)


def read_hellaswag(path: str | Path, limit: int = 0) -> list[Example]:
    """The examples of a HellaSwag JSONL file (its official format), checked line by line."""
    from jaxgpt.data import read_text

    path, out = Path(path), []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n} is not JSON ({e}); pass HellaSwag's official JSONL") from None
        if not isinstance(d, dict):
            raise UserError(f"{path}:{n} is not a JSON object; pass HellaSwag's official JSONL")
        for key, ok in (("ctx", isinstance(d.get("ctx"), str)), ("label", isinstance(d.get("label"), int)),
                        ("endings", isinstance(d.get("endings"), list) and len(d["endings"]) >= 2
                         and all(isinstance(e, str) for e in d["endings"]))):
            if not ok:
                raise UserError(f"{path}:{n} lacks the field {key!r} (or it has the wrong type); HellaSwag lines "
                                "have ctx (text), endings (a list of texts) and label (an index)")
        if not 0 <= d["label"] < len(d["endings"]):
            raise UserError(f"{path}:{n} has label {d['label']} but {len(d['endings'])} endings")
        out.append(Example(d["ctx"], tuple(d["endings"]), d["label"],
                           {k: v for k, v in d.items() if k not in ("ctx", "endings", "label")}))
        if limit and len(out) == limit:
            break
    if not out:
        raise UserError(f"{path} holds no examples; pass HellaSwag's official JSONL (e.g. hellaswag_val.jsonl)")
    return out


def _rows(examples: list[Example], tokenizer, block_size: int) -> list[tuple[list[int], int]]:
    """(tokens, ending length) per ending: the context's tokens, cropped from the left so that inputs fit
    the window, then the ending's (" " + ending)."""
    rows = []
    for ex in examples:
        ctx = tokenizer.encode(ex.ctx)
        for ending in ex.endings:
            end = tokenizer.encode(" " + ending)[:block_size]  # an ending longer than the window is cut
            keep = max(block_size + 1 - len(end), 1)
            rows.append((ctx[-keep:] + end, len(end)))
    return rows


def hellaswag(model: GPT, params, tokenizer, examples: list[Example], batch_size: int = 16, log=None) -> dict:
    """Accuracies (see the module docstring) and every example's scores."""
    T = model.config.block_size
    rows = _rows(examples, tokenizer, T)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths share a batch
    score = jax.jit(lambda p, x, y: loss.sequence_logprobs(model, None, p, {}, x, y))
    lls = np.zeros(len(rows))
    t0 = time.perf_counter()
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        width = min(-(-max(len(rows[j][0]) - 1 for j in idx) // PAD_MULTIPLE) * PAD_MULTIPLE, T)
        x = np.zeros((batch_size, width), np.int32)
        y = np.full((batch_size, width), IGNORE_INDEX, np.int32)
        for r, j in enumerate(idx):
            toks, n_end = rows[j]
            x[r, :len(toks) - 1] = toks[:-1]
            y[r, len(toks) - 1 - n_end:len(toks) - 1] = toks[-n_end:]  # only the ending's tokens are scored
        lls[idx] = np.asarray(jax.device_get(score(params, x, y)))[:len(idx)]
        if log and (time.perf_counter() - t0 > 1 or i + batch_size >= len(order)):
            log(f"hellaswag: {min(i + batch_size, len(order))}/{len(order)} endings scored", i + batch_size >= len(order))
            t0 = time.perf_counter()
    results, k = [], 0
    hits = {"acc": 0, "acc_norm": 0, "acc_norm_char": 0}
    for ex in examples:
        n = len(ex.endings)
        ll, tok = lls[k:k + n], np.array([rows[k + e][1] for e in range(n)])
        chars = np.array([len(e) for e in ex.endings])  # lm-evaluation-harness divides by len(choice)
        preds = {"acc": int(np.argmax(ll)), "acc_norm": int(np.argmax(ll / tok)),
                 "acc_norm_char": int(np.argmax(ll / np.maximum(chars, 1)))}
        for key, p in preds.items():
            hits[key] += p == ex.label
        results.append({**ex.fields, "label": ex.label, "pred": preds["acc"], "pred_norm": preds["acc_norm"],
                        "pred_norm_char": preds["acc_norm_char"],
                        "endings": [{"loglik": float(ll[e]), "tokens": int(tok[e]), "chars": int(chars[e])}
                                    for e in range(n)]})
        k += n
    return {**{key: v / len(examples) for key, v in hits.items()}, "n": len(examples), "examples": results}


def write_results(path: str | Path | None, results: dict, overwrite: bool) -> None:
    """Write the JSON results; an existing file is kept unless --overwrite."""
    if not path:
        return
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another --out or pass --overwrite")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def progress_line(text: str, done: bool = False) -> None:
    """A progress bar's line on a terminal's stderr (redrawn in place); nothing when it is not a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write("\r" + text + ("\n" if done else ""))
        sys.stderr.flush()
