"""The loss of any model on a corpus, as the field reports it.

`corpus_loss` scores a deterministic set of windows of a token stream (a prepared dataset's split, or a
text file): non-overlapping windows of `block_size` targets by default, or, with `stride` < block_size,
windows every `stride` tokens of which only the last `stride` targets are scored (each target once, with
at least block_size - stride tokens of context; the first window scores all of its targets).

HellaSwag is hellaswag.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from jaxgpt.data.dataset import open_prepared
from jaxgpt.errors import UserError
from jaxgpt.files import read_text
from jaxgpt.model import objectives
from jaxgpt.model.gpt import GPT
from jaxgpt.model.losses import IGNORE_INDEX
from jaxgpt.tokenizer.kinds import tokenizer_from_meta


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
    path = Path(data)
    if split not in ("train", "val"):
        raise UserError(f"--split must be train or val, got {split!r}")
    prepared = open_prepared(path)
    if prepared is not None:
        meta = prepared.tokenizer_meta
        if tokenizer_meta is not None and meta != tokenizer_meta:
            raise UserError(f"{path} was tokenized with {meta.get('kind')}, the model with "
                            f"{tokenizer_meta.get('kind')}; prepare the data with the model's tokenizer")
        return prepared.splits[split], f"{path} ({split})"
    if path.is_file():
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
    if T < 2:
        raise UserError(f"--block-size must be at least 2, got {T}")
    if model.config.position == "learned" and T > model.config.block_size:
        raise UserError(f"--block-size {T} is longer than the {model.config.block_size} positions this model learned; "
                        f"use at most {model.config.block_size} (a model with rotary positions reads longer windows)")
    if batch_size < 1 or max_tokens < 0:
        raise UserError("--batch-size must be at least 1 and --max-tokens not negative")
    stream = _Stream(shards)
    if len(stream) < 2:
        raise UserError("the data has fewer than 2 tokens: nothing to score")
    plan = windows(len(stream), T, stride, max_tokens)
    step = jax.jit(lambda p, x, y: objectives.language_model(model)(p, {}, (x, y), None)[1])
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


