"""Preference tuning with Direct Preference Optimization (the book's chapter 7 bonus), on the engine.

Data: JSON or JSON lines, records with `instruction`, optional `input`, `chosen` and `rejected` (formatted
with the Alpaca prompt, as `instruct` does), or with `prompt`, `chosen` and `rejected` (the prompt used as
given). Without a file, the pairs come from the generated instruction set: the right answer chosen over a
plausible wrong one (tasks.preference_pairs), and exact match before and after DPO is reported.

The reference model is the starting model. Its log-probabilities of every pair are computed once, before
the first step, and kept in the output folder (`reference_logps.npy`), so no second copy of the model is
held while training and a resumed run uses the same numbers. Only response tokens (and the end-of-text
after them) are scored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import jax
import numpy as np

from jaxgpt import runtime
from jaxgpt.config import TrainConfig
from jaxgpt.errors import UserError
from jaxgpt.files import write_atomic, write_json
from jaxgpt.finetune import common, crop, instruct, scoring, tasks
from jaxgpt.finetune.config import FinetuneConfig, train_defaults
from jaxgpt.model import losses, objectives
from jaxgpt.model.gpt import GPT
from jaxgpt.store.rundir import RunDir

TASK = "dpo"
REFERENCE_FILE = "reference_logps.npy"


@dataclass(frozen=True)
class DPOConfig(FinetuneConfig):
    # From an instruction-following model (GPT-2 BPE), e.g. `jaxgpt finetune instruct`'s.
    train: TrainConfig = field(default_factory=lambda: train_defaults(init_from="out/instruct", learning_rate=5e-5))
    beta: float = 0.1  # how strongly the policy is held to the reference: larger stays closer
    epochs: int = 2
    n_pairs: int = 1000  # embedded pairs: how many
    max_new_tokens: int = 64  # longest generated response when scoring
    val_fraction: float = 0.05
    test_fraction: float = 0.10
    score_base: bool = True  # score the starting model's responses too (instruction-style data)


def read_pairs(path: str) -> list[dict[str, str]]:
    """Preference records, checked: each has a prompt (instruction [+ input], or prompt) and two different
    responses. Returns {"prompt": formatted prompt, "chosen", "rejected", and "instruction"/"input" if given}."""
    first = instruct.read_records(path, ("chosen", "rejected"), key="chosen")
    out = []
    for i, r in enumerate(first):
        if isinstance(r.get("instruction"), str):
            prompt = instruct.format_prompt({"instruction": r["instruction"], "input": r.get("input", "")})
        elif isinstance(r.get("prompt"), str):
            prompt = r["prompt"]
        else:
            raise UserError(f"{path}: example {i} lacks a text field 'instruction' (or 'prompt')")
        if r["chosen"].strip() == r["rejected"].strip():
            raise UserError(f"{path}: example {i} has the same chosen and rejected response; a pair must differ")
        out.append({**r, "prompt": prompt})
    return out


def fit_pairs(rows, prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]], max_length: int,
              how: str = "right") -> tuple[np.ndarray, crop.Counts, list[list[int]]]:
    """The rows whose pair still teaches within `max_length` tokens (both responses train a target, and the
    two differ there), the counts, and the prompts cropped (`how`, against the longer response)."""
    prompts, counts, kept = list(prompts), crop.Counts(), []
    for i in rows:
        counts.longest_prompt = max(counts.longest_prompt, len(prompts[i]))
        longer = max(chosen[i], rejected[i], key=len)
        prompts[i], _, prompt_cut = crop.fit(prompts[i], longer, max_length, how)
        fits = [crop.fit(prompts[i], r, max_length, "right") for r in (chosen[i], rejected[i])]
        read = [[*prompts[i], *r, -1][:max_length + 1] for r in (chosen[i], rejected[i])]  # -1: end-of-text
        if not all(tokens for _, tokens, _ in fits):
            counts.drop("with the prompt filling the context")
        elif read[0] == read[1]:
            counts.drop("with chosen and rejected the same within the context")
        else:
            counts.keep(sum(tokens for _, tokens, _ in fits), prompt_cut)
            kept.append(i)
    return np.array(kept, dtype=np.asarray(rows).dtype), counts, prompts


class DPO(common.Finetune):
    name = TASK
    plots = (("rewards.png", "reward_accuracy", "DPO reward accuracy", "chosen preferred"),
             ("margins.png", "reward_margin", "DPO reward margin", "chosen - rejected reward"))

    def __init__(self, cfg: DPOConfig, pairs, split, prompts, chosen, rejected, tokenizer, model: GPT,
                 max_length: int, counts: dict[str, crop.Counts]):
        self.pairs, self.split, self.tokenizer, self.model = pairs, split, tokenizer, model
        self.data = {name: c.record() for name, c in counts.items()}
        eot = tokenizer.eot_id

        def sequences(rows):  # (tokens, targets) of shape (B, 2, W): chosen then rejected, prompts masked
            seqs, lengths = [], []
            for r in rows:
                seqs += [prompts[r] + chosen[r], prompts[r] + rejected[r]]
                lengths += [len(prompts[r])] * 2
            x, y = instruct.collate(seqs, eot, max_length, lengths, instruct.PAD_MULTIPLE)
            return x.reshape(len(rows), 2, -1), y.reshape(len(rows), 2, -1)

        self.sequences = sequences
        self.ref: np.ndarray | None = None  # (n_pairs, 2) reference log-probabilities, set by `begin`

        def make(idx, rows=split["train"], size=None):
            x, y = sequences(rows[idx])
            w = np.ones(len(idx), np.float32)
            ref = self.ref[rows[idx]]
            if size is not None and size > len(idx):  # fill a short evaluation batch with weight-0 rows
                pad = [(0, size - len(idx))] + [(0, 0)] * 2
                x, y = np.pad(x, pad), np.pad(y, pad, constant_values=losses.IGNORE_INDEX)
                ref, w = np.pad(ref, pad[:2]), np.pad(w, pad[:1])
            return x, y, ref, w

        super().__init__(cfg, len(split["train"]), make)
        self.describe = {"template": "alpaca", "lora": common.lora_record(cfg), "beta": cfg.beta, "data": self.data}

    def eval_sets(self) -> dict[str, list[tuple]]:
        micro = self.engine.micro_batch
        return {"val": self.batches(len(self.split["val"]), micro,
                                    lambda idx: self.make(idx, self.split["val"], micro))}

    def begin(self, engine, state, frozen, resumed: bool) -> None:
        """The reference log-probabilities: read back, or computed from the starting model (step 0)."""
        path = engine.run_dir / REFERENCE_FILE
        if path.is_file():
            self.ref = np.load(path)
            return
        if resumed:
            raise UserError(f"{path} is missing, so the run cannot resume with its reference model; start it "
                            "again in a new --out-dir")
        lora = engine.parts.lora
        logps = jax.jit(lambda p, f, x, y: objectives.sequence_logprobs(self.model, lora, p, f, x, y))
        micro, n = engine.micro_batch, len(self.pairs)
        ref = np.zeros((n, 2), np.float32)
        for start in range(0, n, micro):
            rows = np.arange(start, min(start + micro, n))
            x, y = self.sequences(np.concatenate([rows, np.zeros(micro - len(rows), int)]))
            B, _, W = x.shape
            x, y = engine.put((x.reshape(2 * B, W), y.reshape(2 * B, W)), train=False)
            ref[rows] = np.asarray(logps(state.params, frozen, x, y)).reshape(B, 2)[:len(rows)]
        self.ref = ref
        if runtime.is_primary():
            buf = io.BytesIO()
            np.save(buf, ref)
            write_atomic(path, buf.getbuffer())

    def finish(self, engine, state, frozen) -> dict:
        cfg = self.cfg
        micro = engine.micro_batch
        test_set = {"test": self.batches(len(self.split["test"]), micro,
                                         lambda idx: self.make(idx, self.split["test"], micro))}
        results = {"test": {k.removeprefix("test_"): v for k, v in
                            engine.evaluate(state.params, frozen, test_set).items()},
                   "examples": {k: len(v) for k, v in self.split.items()}, "data": self.data,
                   "evaluations": RunDir(engine.run_dir).evaluations()}
        test = [self.pairs[i] for i in self.split["test"]]
        prompts = [p["prompt"] for p in test]
        model_cfg = engine.model.config
        after = instruct.respond(model_cfg, engine.full_params(state, frozen), self.tokenizer, prompts,
                                 cfg.max_new_tokens)
        results["exact_match"] = {"after": scoring.score(after, [p["chosen"] for p in test])}
        if cfg.score_base:
            before = instruct.respond(model_cfg, common.base_params(cfg, model_cfg), self.tokenizer, prompts,
                                      cfg.max_new_tokens)
            results["exact_match"]["before"] = scoring.score(before, [p["chosen"] for p in test])
        if runtime.is_primary():
            write_json(engine.run_dir / instruct.RESPONSES_FILE,
                              [{**p, "model_response": r} for p, r in zip(test, after)])
            if not cfg.data:
                write_json(engine.run_dir / "preferences.json", self.pairs)
        em = results["exact_match"]
        before = f" (before DPO {em['before']['exact_match']:.3f})" if "before" in em else ""
        common.finish(engine, results, f"test: reward accuracy {results['test']['reward_accuracy']:.3f}, exact match "
                      f"{em['after']['exact_match']:.3f}{before} on {len(test)} examples")
        return results


def finetune(cfg: DPOConfig, devices=None) -> dict | None:
    """Preference-tune `train.init_from` into train.out_dir (resuming an unfinished run there). Returns
    results.json's dict (None if a signal stopped it)."""
    common.check(cfg, ("all", "last_blocks", "lora"))
    if not cfg.beta > 0:
        raise UserError(f"--beta must be positive, got {cfg.beta}")
    for key in ("max_new_tokens", "n_pairs"):
        if getattr(cfg, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(cfg, key)}")
    path = common.out_dir(cfg, "out/dpo")
    if cfg.data:
        pairs = read_pairs(cfg.data)
    else:
        pairs = [{**p, "prompt": instruct.format_prompt(p)}
                 for p in tasks.preference_pairs(cfg.n_pairs, cfg.train.seed)]
    model_cfg, tokenizer = common.base_model(cfg)
    instruct.needs_eot(tokenizer, cfg.train.init_from)
    max_length = cfg.max_length or model_cfg.block_size
    if max_length > model_cfg.block_size:
        raise UserError(f"--max-length={max_length} exceeds the model's context of {model_cfg.block_size}")
    split = instruct.split_entries(len(pairs), cfg)
    prompts = [tokenizer.encode(p["prompt"]) for p in pairs]
    chosen = [tokenizer.encode(p["chosen"]) for p in pairs]
    rejected = [tokenizer.encode(p["rejected"]) for p in pairs]
    longest = max(len(p) + max(len(c), len(r)) + 1 for p, c, r in zip(prompts, chosen, rejected))
    if longest > max_length and not cfg.truncate:
        raise UserError(f"some pairs are longer than {max_length} tokens; raise --max-length or allow --truncate")
    counts, cropped = {}, list(prompts)
    for name in ("train", "val", "test"):  # the test pairs are scored by reward accuracy too
        split[name], counts[name], cropped = fit_pairs(split[name], cropped, chosen, rejected, max_length, cfg.crop)
    crop.require(counts, max_length, "pairs")
    model = GPT(common.resolved(model_cfg, cfg))
    task = DPO(cfg, pairs, split, cropped, chosen, rejected, tokenizer, model, max_length, counts)
    print(f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])} train/val/test preference pairs; beta "
          f"{cfg.beta}; {crop.describe(counts)}")
    run_cfg = common.run_config(cfg, model_cfg, tokenizer.name, path, task.max_steps, task.steps_per_epoch)
    return common.train(task, cfg, run_cfg, model, objectives.preference(model, cfg.beta, common.parts(cfg).lora), path,
                        tokenizer.meta(), lambda: common.base_params(cfg, model_cfg), devices)
