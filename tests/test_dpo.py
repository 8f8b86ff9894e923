"""Preference tuning (DPO): the loss and its gradient against PyTorch on a random GPT-2, overfitting a few
pairs, and `jaxgpt finetune dpo` end to end, on embedded pairs and on a user's file."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import save_bpe_model
from hf_reference import TINY, flax_leaf, random_hf_model

from jaxgpt.model import objectives
from jaxgpt.cli.main import main
from jaxgpt.config import Config, TrainConfig
from jaxgpt.train.engine import Engine
from jaxgpt.finetune import dpo
from jaxgpt.store.loader import load, load_pretrained
from jaxgpt.model.losses import IGNORE_INDEX
from jaxgpt.model.gpt import GPT

BETA = 0.3


def _pairs(vocab: int, B: int = 3, T: int = 10, seed: int = 0):
    """Token pairs (B, 2, T), targets with each row's prompt masked, and reference log-probabilities."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (B, 2, T + 1))
    tokens[:, 1, :4] = tokens[:, 0, :4]  # chosen and rejected share their prompt
    x, y = tokens[..., :-1], tokens[..., 1:].copy()
    prompt = rng.integers(2, 5, B)
    for b in range(B):
        y[b, :, :prompt[b] - 1] = IGNORE_INDEX
    y[0, 1, -2:] = IGNORE_INDEX  # a shorter rejected response (padding)
    ref = rng.normal(-40, 3, (B, 2)).astype(np.float32)
    return x, y, ref


def _torch_dpo(model, x, y, ref):
    """The DPO loss written directly in PyTorch, and its gradient for every parameter (HF names)."""
    model.zero_grad()
    B, _, T = x.shape
    logits = model(torch.as_tensor(x.reshape(2 * B, T), dtype=torch.long)).logits  # (2B, T, V)
    targets = torch.as_tensor(y.reshape(2 * B, T), dtype=torch.long)
    mask = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    logp = (picked * mask).sum(-1).reshape(B, 2)
    ref = torch.as_tensor(ref)
    margin = BETA * ((logp[:, 0] - ref[:, 0]) - (logp[:, 1] - ref[:, 1]))
    value = -torch.nn.functional.logsigmoid(margin).mean()
    value.backward()
    grads = {n.removeprefix("transformer."): p.grad.numpy().copy() for n, p in model.named_parameters()}
    return float(value.detach()), grads


def test_dpo_loss_and_gradient_equal_pytorch(tmp_path):
    model = random_hf_model(seed=3, weight_std=0.1, **TINY)
    model.save_pretrained(tmp_path / "hf")
    cfg, params = load_pretrained(tmp_path / "hf")
    x, y, ref = _pairs(cfg.vocab_size)
    want, want_grads = _torch_dpo(model, x, y, ref)

    def mean(params):
        total, sums = objectives.preference(GPT(cfg), BETA)(params, {}, (x, y, ref, jnp.ones(3)), None)
        return total / sums["count"]

    got, grads = jax.value_and_grad(mean)(params)
    assert abs(float(got) - want) < 1e-5, (float(got), want)
    for name, ref_grad in want_grads.items():
        np.testing.assert_allclose(flax_leaf(grads, name, cfg), ref_grad, atol=1e-5, rtol=0, err_msg=name)


def test_overfitting_a_few_pairs_reaches_full_reward_accuracy(tiny_model):
    model = GPT(tiny_model)
    train = TrainConfig(batch_size=4, learning_rate=1e-2, lr_schedule="constant", warmup_steps=0)
    engine = Engine(Config(model=tiny_model, train=train), model, objectives.preference(model, beta=0.5))
    state, frozen = engine.start()
    x, y, _ = _pairs(tiny_model.vocab_size, B=4, T=12, seed=1)
    ref = np.asarray(objectives.sequence_logprobs(model, None, state.params, {}, x.reshape(8, 12), y.reshape(8, 12)))
    batch = engine.put((x[None], y[None], ref.reshape(1, 4, 2), np.ones((1, 4), np.float32)))
    accuracies = []
    for _ in range(30):
        state, m = engine.train_step(state, batch, frozen)
        accuracies.append(float(m["reward_accuracy"]))
    assert accuracies[0] < 1.0 and accuracies[-1] == 1.0 and float(m["loss"]) < 0.3


@pytest.fixture(scope="module")
def instruct_base(tmp_path_factory):
    """A tiny GPT with GPT-2's vocabulary saved as a jaxgpt model directory."""
    return save_bpe_model(tmp_path_factory.mktemp("base") / "model", block_size=96)


def test_finetune_dpo_on_embedded_pairs_end_to_end(instruct_base, tmp_path, capsys):
    out = tmp_path / "dpo"
    args = ["finetune", "dpo", "--init-from", str(instruct_base), "--out-dir", str(out), "--n-pairs", "48",
            "--epochs", "1", "--batch-size", "4", "--max-new-tokens", "3", "--log-interval", "1", "--no-progress"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Policy = reference at the first step: the loss is ln 2, and every pair's reward margin is 0.
    assert records[0]["step"] == 1 and records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(records[0]["reward_margin"]) < 1e-5
    for key in ("reward_accuracy", "chosen_logp", "rejected_logp", "lr"):
        assert key in records[0], key
    evals = [r for r in records if "val_loss" in r]
    assert evals and {"val_reward_accuracy", "val_reward_margin", "val_chosen_logp", "val_rejected_logp"} <= set(evals[-1])
    results = json.loads((out / "results.json").read_text())
    assert results["examples"] == {"train": 42, "val": 2, "test": 4}
    assert {"before", "after"} <= set(results["exact_match"]) and "reward_accuracy" in results["test"]
    assert {"rewards.png", "margins.png", "reference_logps.npy", "test_responses.json", "preferences.json"} <= {
        p.name for p in out.iterdir()}
    assert load(out).task["task"] == "dpo"  # the tuned model loads like any other
    assert main(["sample", str(out), "--num-tokens", "2", "--prompt", "hi"]) == 0


def test_finetune_dpo_reads_prompt_and_instruction_records(instruct_base, tmp_path):
    records = [{"prompt": f"Q{i}: yes or no?\nA:", "chosen": " yes", "rejected": " no"} for i in range(12)]
    records += [{"instruction": "Name a color.", "input": str(i), "chosen": "red", "rejected": "car"} for i in range(12)]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    pairs = dpo.read_pairs(str(data))
    assert pairs[0]["prompt"] == "Q0: yes or no?\nA:" and pairs[12]["prompt"].endswith("### Response:\n")
    cfg = dpo.DPOConfig.of(init_from=str(instruct_base), data=str(data), out_dir=str(tmp_path / "out"), epochs=1,
                        batch_size=4, max_new_tokens=2, score_base=False, trainable="lora", progress=False)
    results = dpo.finetune(cfg)
    assert results["examples"] == {"train": 21, "val": 1, "test": 2} and "before" not in results["exact_match"]
    assert not (tmp_path / "prefs-responses.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "out", "prefs.jsonl"]  # everything lands in the output folder
    ref = np.load(tmp_path / "out" / "reference_logps.npy")
    assert ref.shape == (24, 2) and np.all(ref < 0)


@pytest.mark.parametrize("content,pattern", [
    ('[{"instruction": "a", "chosen": "b"}]', "example 0 lacks a text field 'rejected'"),
    ('[{"chosen": "b", "rejected": "c"}]', "example 0 lacks a text field 'instruction' (or 'prompt')"),
    ('[{"prompt": "p", "chosen": "same", "rejected": "same "}]', "example 0 has the same chosen and rejected"),
    ("[]", "must hold a non-empty list"),
    ("", "must hold a non-empty list"),
])
def test_bad_preference_files_are_one_line(instruct_base, tmp_path, capsys, content, pattern):
    data = tmp_path / "prefs.json"
    data.write_text(content)
    code = main(["finetune", "dpo", "--init-from", str(instruct_base), "--data", str(data),
                 "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and pattern in err, err
    assert not (tmp_path / "out").exists()
