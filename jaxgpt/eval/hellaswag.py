"""HellaSwag as the field reports it.

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
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from jaxgpt.errors import UserError
from jaxgpt.files import read_text
from jaxgpt.model import objectives
from jaxgpt.model.gpt import GPT
from jaxgpt.model.losses import IGNORE_INDEX

PAD_MULTIPLE = 32  # HellaSwag batches are padded to a multiple of this many tokens: few compilations


@dataclass(frozen=True)
class Example:
    ctx: str
    endings: tuple[str, ...]
    label: int
    fields: dict  # everything else the line has (ind, activity_label, source_id, ...)


def read_hellaswag(path: str | Path, limit: int = 0) -> list[Example]:
    """The examples of a HellaSwag JSONL file (its official format), checked line by line."""
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
    score = jax.jit(lambda p, x, y: objectives.sequence_logprobs(model, None, p, {}, x, y))
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
