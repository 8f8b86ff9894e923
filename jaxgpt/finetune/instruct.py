"""Instruction finetuning (the book's chapter 7): Alpaca-format data, the Alpaca prompt, padded batches
whose padding is ignored by the loss, and exact-match / token-F1 scoring of the responses.

Training runs on the engine with the fused head loss (the (B, T, 50257) logits never exist). Without a data
file the embedded task is the generated, verifiable instruction set of `tasks.py`. Everything, the test
responses included, is written into the output folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from jaxgpt import runtime
from jaxgpt.config import TrainConfig
from jaxgpt.errors import UserError
from jaxgpt.files import read_text, write_json
from jaxgpt.finetune import common, crop, scoring, tasks
from jaxgpt.finetune.config import FinetuneConfig, train_defaults
from jaxgpt.model import objectives
from jaxgpt.model.gpt import GPT
from jaxgpt.model.losses import IGNORE_INDEX
from jaxgpt.model.sampling import generate
from jaxgpt.store.rundir import RunDir
from jaxgpt.tokenizer.kinds import Tokenizer

TASK = "instruct"
PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
PAD_MULTIPLE = 32  # batches are padded to a multiple of this many tokens: few shapes, few compilations
RESPONSES_FILE = "test_responses.json"


@dataclass(frozen=True)
class InstructConfig(FinetuneConfig):
    # From a model whose tokenizer has <|endoftext|> (GPT-2's BPE).
    train: TrainConfig = field(default_factory=lambda: train_defaults(init_from="out/shakespeare_gpt2bpe",
                                                                      learning_rate=1e-3))
    # Suits the small default model (validation loss stops falling after about 5 epochs); for GPT-2 124M
    # and up the book uses 5e-5 and 2 epochs.
    epochs: int = 5
    mask_prompt: bool = False  # learn only the response tokens
    max_new_tokens: int = 64  # longest generated response
    n_tasks: int = 1000  # embedded task set: examples generated
    val_fraction: float = 0.05
    test_fraction: float = 0.10
    score_base: bool = False  # also score the model before finetuning, for comparison


def read_records(path: str | Path, fields: tuple[str, ...], key: str = "instruction") -> list[dict]:
    """The objects of a JSON list or a JSON-lines file, each checked to have the text `fields` (and, if it
    has one, a text "input"); a whole-file object is one record if it has `key`."""
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
    example = ", ".join(f'"{f}": ...' for f in fields)
    if isinstance(data, dict):  # a whole-file object: one JSON-lines example, or a wrapper around the list
        if key not in data:
            raise UserError(f"{path} holds one JSON object, not a list of examples; write a list "
                            f"[{{{example}}}, ...] or one such object per line (JSON lines)")
        data = [data]
    if not isinstance(data, list) or not data:
        raise UserError(f"{path} must hold a non-empty list of objects with {' and '.join(map(repr, fields))}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: example {i} is not an object")
        for name in fields:
            if not isinstance(entry.get(name), str):
                raise UserError(f"{path}: example {i} lacks a text field {name!r}")
        if not isinstance(entry.get("input", ""), str):
            raise UserError(f"{path}: example {i} has a non-text 'input'")
    return data


def read_instructions(path: str | Path) -> list[dict[str, str]]:
    """Alpaca-format examples from a JSON list or a JSON-lines file, checked field by field."""
    data = read_records(path, ("instruction", "output"))
    return [{"instruction": e["instruction"], "input": e.get("input", ""), "output": e["output"]} for e in data]


def format_prompt(entry: dict[str, str]) -> str:
    """The Alpaca prompt up to and including the response header; the response follows it."""
    text = f"{PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text + "\n\n### Response:\n"


def chat_prompt(tokenizer: Tokenizer, messages: list[dict[str, str]], alpaca: bool) -> str:
    """The prompt for the next assistant turn of `messages` ([{"role": "user", "content": ...}, ...]): the
    Alpaca format when `alpaca` (a `finetune instruct` model learned it; only the last user message is
    asked) or the tokenizer has no chat template, else the tokenizer's chat template (Qwen3, Llama 3)."""
    if alpaca or getattr(tokenizer, "chat_template", None) is None:
        return format_prompt({"instruction": messages[-1]["content"], "input": ""})
    return tokenizer.render_chat(messages, add_generation_prompt=True)


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


def respond(model_cfg, params, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int,
            batch_size: int = 8) -> list[str]:
    """Greedy responses to each prompt (e.g. `format_prompt(entry)`), stopping at <|endoftext|>."""
    prompts = [tokenizer.encode(p) for p in prompts]
    out: list[str] = [""] * len(prompts)
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


def split_entries(n: int, cfg: FinetuneConfig) -> dict[str, np.ndarray]:
    """Shuffled train/val/test index arrays of n examples (refused when a split would be empty)."""
    order = np.random.default_rng(cfg.train.seed).permutation(n)
    n_val, n_test = int(n * cfg.val_fraction), int(n * cfg.test_fraction)
    n_train = n - n_val - n_test
    split = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    if min(len(v) for v in split.values()) == 0:
        raise UserError(f"{n} examples are too few for train/validation/test splits; add examples")
    return split


def fit_examples(rows: np.ndarray, prompts: list[list[int]], responses: list[list[int]], max_length: int,
                 cfg: InstructConfig) -> tuple[np.ndarray, crop.Counts, list[list[int]]]:
    """The rows that train at least one target within `max_length` tokens, the counts, and the prompts
    cropped as `--crop` says."""
    prompts, counts, kept = list(prompts), crop.Counts(), []
    for i in rows:
        counts.longest_prompt = max(counts.longest_prompt, len(prompts[i]))
        prompts[i], tokens, cut = crop.fit(prompts[i], responses[i], max_length, cfg.crop, cfg.mask_prompt)
        if tokens:
            counts.keep(tokens, cut)
            kept.append(i)
        else:
            counts.drop("with the prompt filling the context")
    return np.array(kept, dtype=rows.dtype), counts, prompts


def needs_eot(tokenizer: Tokenizer, init_from: str) -> None:
    if tokenizer.eot_id is None:
        raise UserError(f"the model in {init_from} uses the {tokenizer.name} tokenizer, which has no "
                        "<|endoftext|> to end a response; start from a GPT-2 BPE model")


def fill(batch: tuple[np.ndarray, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (inputs, targets) to `size` rows of pure padding, which count for nothing."""
    x, y = batch
    extra = size - len(x)
    return np.pad(x, ((0, extra), (0, 0))), np.pad(y, ((0, extra), (0, 0)), constant_values=IGNORE_INDEX)


class Instruct(common.Finetune):
    name = TASK

    def __init__(self, cfg: InstructConfig, entries, split, prompts, seqs, tokenizer: Tokenizer, max_length: int,
                 truncated: int, counts: dict[str, crop.Counts]):
        self.entries, self.split, self.tokenizer, self.truncated = entries, split, tokenizer, truncated
        self.data = {name: c.record() for name, c in counts.items()}

        def make(idx, rows=split["train"]):
            pl = [len(prompts[rows[i]]) for i in idx] if cfg.mask_prompt else None
            return collate([seqs[rows[i]] for i in idx], tokenizer.eot_id, max_length, pl, PAD_MULTIPLE)

        super().__init__(cfg, len(split["train"]), make)
        self.make_val = lambda idx: make(idx, split["val"])
        self.describe = {"template": "alpaca", "lora": common.lora_record(cfg), "data": self.data}

    def eval_sets(self) -> dict[str, list[tuple]]:
        micro = self.engine.micro_batch
        return {"val": self.batches(len(self.split["val"]), micro, lambda idx: fill(self.make_val(idx), micro))}

    def summarize(self, metrics: dict) -> dict:
        return {**metrics, "val_perplexity": float(np.exp(metrics["val_loss"]))}

    def finish(self, engine, state, frozen) -> dict:
        cfg = self.cfg
        test = [self.entries[i] for i in self.split["test"]]
        model_cfg = engine.model.config
        prompts = [format_prompt(e) for e in test]
        responses = respond(model_cfg, engine.full_params(state, frozen), self.tokenizer, prompts, cfg.max_new_tokens)
        score = scoring.score(responses, [e["output"] for e in test])
        base = None
        if cfg.score_base:
            base = scoring.score(respond(model_cfg, common.base_params(cfg, model_cfg), self.tokenizer, prompts,
                                       cfg.max_new_tokens), [e["output"] for e in test])
        results = {"test": score, "base_test": base, "examples": {k: len(v) for k, v in self.split.items()},
                   "truncated": self.truncated, "data": self.data,
                   "evaluations": RunDir(engine.run_dir).evaluations()}
        answered = [{**e, "model_response": r} for e, r in zip(test, responses)]
        if runtime.is_primary():
            if not cfg.data:  # the generated set is an input too: keep it beside its responses
                write_json(engine.run_dir / "instructions.json", self.entries)
            write_json(engine.run_dir / RESPONSES_FILE, answered)
        before = f" (before finetuning {base['exact_match']:.3f})" if base else ""
        common.finish(engine, results, f"test: exact match {score['exact_match']:.3f}{before}, token F1 "
                      f"{score['token_f1']:.3f} on {score['n']} examples; responses in {RESPONSES_FILE}")
        return results


def finetune(cfg: InstructConfig, devices=None) -> dict | None:
    """Finetune on instructions as `cfg` says into train.out_dir (resuming an unfinished one there); the model,
    curves, test responses and scores land there. Returns results.json's dict (None if a signal stopped it)."""
    common.check(cfg, ("all", "last_blocks", "lora"))
    for key in ("max_new_tokens", "n_tasks"):
        if getattr(cfg, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(cfg, key)}")
    path = common.out_dir(cfg, "out/instruct")
    entries = read_instructions(cfg.data) if cfg.data else tasks.generate_tasks(cfg.n_tasks, cfg.train.seed)
    model_cfg, tokenizer = common.base_model(cfg)
    needs_eot(tokenizer, cfg.train.init_from)
    max_length = cfg.max_length or model_cfg.block_size
    if max_length > model_cfg.block_size:
        raise UserError(f"--max-length={max_length} exceeds the model's context of {model_cfg.block_size}")
    split = split_entries(len(entries), cfg)
    prompts = [tokenizer.encode(format_prompt(e)) for e in entries]
    responses = [tokenizer.encode(e["output"]) for e in entries]
    too_long = sum(len(prompts[i]) + len(responses[i]) + 1 > max_length
                   for i in np.concatenate([split["train"], split["val"]]))
    if too_long and not cfg.truncate:
        raise UserError(f"{too_long} examples are longer than {max_length} tokens; "
                        "raise --max-length or allow --truncate")
    counts = {}
    for name in ("train", "val"):  # the test split is prompted, not trained on
        split[name], counts[name], prompts = fit_examples(split[name], prompts, responses, max_length, cfg)
    crop.require(counts, max_length)
    seqs = [p + r for p, r in zip(prompts, responses)]
    model = GPT(common.resolved(model_cfg, cfg))
    task = Instruct(cfg, entries, split, prompts, seqs, tokenizer, max_length, int(too_long), counts)
    print(f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])} train/val/test examples; "
          f"{too_long} longer than {max_length} tokens are cut; {crop.describe(counts)}")
    run_cfg = common.run_config(cfg, model_cfg, tokenizer.name, path, task.max_steps, task.steps_per_epoch)
    return common.train(task, cfg, run_cfg, model, objectives.language_model(model, common.parts(cfg).lora), path,
                        tokenizer.meta(), lambda: common.base_params(cfg, model_cfg), devices)
