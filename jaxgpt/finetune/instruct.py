"""Instruction finetuning (the book's chapter 7): Alpaca-format data, the Alpaca prompt, padded batches
whose padding is ignored by the loss, and exact-match / token-F1 scoring of the responses.

Without a data file the embedded task is the generated, verifiable instruction set of `tasks.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import checkpoint
from jaxgpt.config import Config, DataConfig
from jaxgpt.data import read_text
from jaxgpt.errors import UserError
from jaxgpt.files import staged_dir
from jaxgpt.finetune import common, tasks
from jaxgpt.model import GPT
from jaxgpt.sampling import generate
from jaxgpt.steps import IGNORE_INDEX, cross_entropy
from jaxgpt.tokenizer import Tokenizer

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
PAD_MULTIPLE = 32  # batches are padded to a multiple of this many tokens: few shapes, few compilations


@dataclass(frozen=True)
class InstructConfig(common.FinetuneConfig):
    init_from: str = "out/shakespeare_gpt2bpe"  # needs a tokenizer with <|endoftext|> (GPT-2's BPE)
    # Suits the small default model (validation loss stops falling after about 5 epochs); for GPT-2 124M
    # and up the book uses 5e-5 and 2 epochs.
    epochs: int = 5
    learning_rate: float = 1e-3
    mask_prompt: bool = False  # learn only the response tokens
    max_new_tokens: int = 64  # longest generated response
    n_tasks: int = 1000  # embedded task set: examples generated
    val_fraction: float = 0.05
    test_fraction: float = 0.10
    score_base: bool = False  # also score the model before finetuning, for comparison


def read_instructions(path: str | Path) -> list[dict[str, str]]:
    """Alpaca-format examples from a JSON list or a JSON-lines file, checked field by field."""
    path = Path(path)
    raw = read_text(path)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        if raw.lstrip().startswith("["):
            raise UserError(f"{path} is not JSON ({e})") from None
        try:  # JSON lines
            data = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not JSON or JSON lines ({e})") from None
    if isinstance(data, dict):  # a whole-file object: one JSON-lines example, or a wrapper around the list
        if "instruction" not in data:
            raise UserError(f"{path} holds one JSON object, not a list of examples; write a list "
                            "[{\"instruction\": ..., \"output\": ...}, ...] or one such object per line (JSON lines)")
        data = [data]
    if not isinstance(data, list) or not data:
        raise UserError(f"{path} must hold a non-empty list of objects with 'instruction' and 'output'")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: example {i} is not an object")
        for key in ("instruction", "output"):
            if not isinstance(entry.get(key), str):
                raise UserError(f"{path}: example {i} lacks a text field {key!r}")
        if not isinstance(entry.get("input", ""), str):
            raise UserError(f"{path}: example {i} has a non-text 'input'")
    return [{"instruction": e["instruction"], "input": e.get("input", ""), "output": e["output"]} for e in data]


def format_prompt(entry: dict[str, str]) -> str:
    """The Alpaca prompt up to and including the response header; the response follows it."""
    text = f"{PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text + "\n\n### Response:\n"


def collate(sequences: list[list[int]], eot_id: int, allowed_max_length: int | None = None,
            prompt_lengths: list[int] | None = None, pad_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets (B, T) for token lists of different lengths.

    Each sequence gets one <|endoftext|> appended and is padded with more; the targets keep that first
    end-of-text (the model learns to stop) and mark the rest of the padding IGNORE_INDEX. With
    `prompt_lengths`, targets inside each prompt are ignored too, so only responses are learned.
    """
    width = max(len(s) for s in sequences)  # inputs and targets are one token shorter than seq + <|endoftext|>
    width = -(-width // pad_multiple) * pad_multiple
    padded = np.full((len(sequences), width + 1), eot_id, np.int32)
    for i, s in enumerate(sequences):
        padded[i, :len(s)] = s
    inputs, targets = padded[:, :-1], padded[:, 1:].copy()  # (B, width) each
    for i, s in enumerate(sequences):
        targets[i, len(s):] = IGNORE_INDEX  # target len(s) - 1 is the kept end-of-text
        if prompt_lengths is not None:
            targets[i, :prompt_lengths[i] - 1] = IGNORE_INDEX
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


def _batch_loss(model: common.Model):
    def batch_loss(trainable, frozen, batch, key):
        inputs, targets = batch
        rngs = None if key is None else {"dropout": key}
        logits, _ = model.forward(trainable, frozen, inputs, deterministic=key is None, rngs=rngs)
        total, count = cross_entropy(logits, targets)
        return total / jnp.maximum(count, 1), {"loss_sum": total, "count": count}
    return batch_loss


def respond(model_cfg, params, tokenizer: Tokenizer, entries: list[dict], max_new_tokens: int,
            batch_size: int = 8) -> list[str]:
    """Greedy responses to each entry's Alpaca prompt, stopping at <|endoftext|>."""
    prompts = [tokenizer.encode(format_prompt(e)) for e in entries]
    out: list[str] = [""] * len(entries)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):  # equal-length prompts share a batch (generate takes a rectangle)
        by_length.setdefault(len(p), []).append(i)
    for length, idx in sorted(by_length.items()):
        for start in range(0, len(idx), batch_size):
            rows = idx[start:start + batch_size]
            ids = generate(GPT(model_cfg), params, np.array([prompts[i] for i in rows]), max_new_tokens,
                           key=jax.random.key(0), temperature=0.0, eot_id=tokenizer.eot_id)
            kept = min(length, model_cfg.block_size - 1)  # generate keeps this much of a long prompt
            for i, row in zip(rows, ids[:, kept:]):
                row = row.tolist()
                row = row[:row.index(tokenizer.eot_id)] if tokenizer.eot_id in row else row
                out[i] = tokenizer.decode(row).strip()
    return out


def finetune(cfg: InstructConfig, log=print) -> dict:
    """Finetune on instructions as `cfg` says; save the model, curves and test responses. Returns results."""
    out_dir = common.check(cfg, "out/instruct", allowed=("all", "last_blocks", "lora"))
    for key in ("max_new_tokens", "n_tasks"):
        if getattr(cfg, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(cfg, key)}")
    entries = read_instructions(cfg.data) if cfg.data else tasks.generate_tasks(cfg.n_tasks, cfg.seed)
    model_cfg, gpt_params, tokenizer = common.load_base(cfg)
    if tokenizer.eot_id is None:
        raise UserError(f"the model in {cfg.init_from} uses the {tokenizer.name} tokenizer, which has no "
                        "<|endoftext|> to end a response; start from a GPT-2 BPE model")
    max_length = cfg.max_length or model_cfg.block_size
    if max_length > model_cfg.block_size:
        raise UserError(f"--max-length={max_length} exceeds the model's context of {model_cfg.block_size}")
    order = np.random.default_rng(cfg.seed).permutation(len(entries))
    n_val, n_test = int(len(entries) * cfg.val_fraction), int(len(entries) * cfg.test_fraction)
    n_train = len(entries) - n_val - n_test
    split = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    if min(len(v) for v in split.values()) == 0:
        raise UserError(f"{len(entries)} examples are too few for train/validation/test splits; add examples")
    prompts = [tokenizer.encode(format_prompt(e)) for e in entries]
    seqs = [p + tokenizer.encode(e["output"]) for p, e in zip(prompts, entries)]
    too_long = sum(len(seqs[i]) + 1 > max_length for i in np.concatenate([split["train"], split["val"]]))
    if too_long and not cfg.truncate:
        raise UserError(f"{too_long} examples are longer than {max_length} tokens; "
                        "raise --max-length or allow --truncate")
    log(f"{n_train}/{n_val}/{n_test} train/val/test examples; {too_long} longer than {max_length} tokens are cut")

    model, trainable, frozen = common.split_params(cfg, model_cfg, {"gpt": gpt_params})
    steps = common.Steps(_batch_loss(model), cfg, trainable, frozen)

    def make(idx):
        pl = [len(prompts[i]) for i in idx] if cfg.mask_prompt else None
        return collate([seqs[i] for i in idx], tokenizer.eot_id, max_length, pl, PAD_MULTIPLE)

    def val_batches():
        out = []
        for idx in common.batches(n_val, cfg.batch_size, None, False):
            x, y = make(split["val"][idx])
            fill = cfg.batch_size - len(idx)  # rows of pure padding keep the batch shape and count nothing
            out.append((np.pad(x, ((0, fill), (0, 0))), np.pad(y, ((0, fill), (0, 0)), constant_values=IGNORE_INDEX)))
        return out

    base_score = None
    test = [entries[i] for i in split["test"]]
    if cfg.score_base:
        base_score = tasks.score(respond(model_cfg, gpt_params, tokenizer, test, cfg.max_new_tokens),
                                 [e["output"] for e in test])
        log(f"before finetuning: exact match {base_score['exact_match']:.3f}, token F1 {base_score['token_f1']:.3f}")
    summarize = lambda s: {"loss": s["loss_sum"] / max(s["count"], 1)}  # noqa: E731
    with staged_dir(out_dir, cfg.overwrite) as tmp:

        def train_batches(epoch):
            order = common.batches(n_train, cfg.batch_size, cfg.seed + epoch, drop_last=True)
            return (make(split["train"][i]) for i in order)

        history = common.fit(steps, cfg, train_batches, val_batches, summarize, log, tmp / "metrics.jsonl")
        common.plot_history(history, tmp / "loss.png", "loss", "instruction finetuning loss", "cross-entropy")
        params = model.merged(steps.state.params, steps.frozen)["gpt"]
        responses = respond(model_cfg, params, tokenizer, test, cfg.max_new_tokens)
        score = tasks.score(responses, [e["output"] for e in test])
        results = {"test": score, "base_test": base_score, "examples": {k: len(v) for k, v in split.items()},
                   "truncated": int(too_long), "epochs": history}
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        checkpoint.save_model(tmp, Config(model=model_cfg, data=DataConfig(tokenizer=tokenizer.name)), params,
                              tokenizer.meta(), {"finetuned": "instruct", "template": "alpaca",
                                                 "init_from": cfg.init_from})
        if not cfg.data:  # the generated set is an input too: keep it beside its responses
            (tmp / "instructions.json").write_text(json.dumps(entries, indent=1) + "\n")
    inputs = Path(cfg.data) if cfg.data else out_dir / "instructions.json"
    responses_path = common.unique_path(inputs.with_name(f"{inputs.stem}-responses.json"))
    answered = [{**e, "model_response": r} for e, r in zip(test, responses)]
    responses_path.write_text(json.dumps(answered, indent=1) + "\n")
    log(f"test: exact match {score['exact_match']:.3f}, token F1 {score['token_f1']:.3f} on {score['n']} examples; "
        f"responses in {responses_path}; model saved to {out_dir}")
    return {**results, "responses": str(responses_path)}
