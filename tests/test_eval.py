"""`jaxgpt eval`: HellaSwag log-likelihoods and the loss on a prepared dataset, against transformers'
GPT2LMHeadModel on random GPT-2 weights; cropping, batch sizes, and evaluation during training."""

import json
import random

import numpy as np
import pytest
import torch
from hf_reference import random_hf_model

from jaxgpt.cli.main import main
from jaxgpt.eval.corpus import windows
from jaxgpt.tokenizer.kinds import GPT2Tokenizer

VOCAB = dict(vocab_size=50257, n_embd=32, n_layer=2, n_head=4)
WORDS = "the man is sitting on a roof and then he starts pulling up roofing while a dog barks at the cat".split()


def hellaswag_file(path, n: int = 8, long_every: int = 3, seed: int = 0):
    """HellaSwag's official JSONL layout, our own content; every `long_every`-th context is long."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        ctx = " ".join(rng.choice(WORDS) for _ in range(60 if i % long_every == 0 else 8)).capitalize()
        endings = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))) + "." for _ in range(4)]
        lines.append({"ind": i, "activity_label": "Roof shingle removal", "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                      "split": "val", "split_type": "indomain", "label": rng.randrange(4), "endings": endings,
                      "source_id": f"activitynet~v_{i}"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return lines


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    model = random_hf_model(seed=4, weight_std=0.1, n_positions=32, **VOCAB)
    model.save_pretrained(path)
    return model, path


def _torch_ending_logliks(model, lines, block_size=32):
    """Each ending's summed log-probability after its context, cropped from the left, computed directly."""
    tok, out = GPT2Tokenizer(), []
    for ex in lines:
        ctx, row = tok.encode(ex["ctx"]), []
        for ending in ex["endings"]:
            end = tok.encode(" " + ending)
            seq = (ctx + end)[-(block_size + 1):]
            with torch.no_grad():
                logits = model(torch.tensor([seq[:-1]])).logits[0]
            logp = torch.log_softmax(logits, -1)
            row.append(sum(float(logp[len(seq) - 2 - j, seq[len(seq) - 1 - j]]) for j in range(len(end))))
        out.append(row)
    return out


def test_hellaswag_log_likelihoods_and_predictions_equal_transformers(hf_model, tmp_path, capsys):
    model, path = hf_model
    lines = hellaswag_file(tmp_path / "hs.jsonl")
    assert main(["eval", "hellaswag", str(path), "--data", str(tmp_path / "hs.jsonl"), "--out",
                 str(tmp_path / "r.json"), "--batch-size", "5"]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    want = _torch_ending_logliks(model, lines)
    got = [[e["loglik"] for e in ex["endings"]] for ex in r["examples"]]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)  # the long contexts were cropped from the left
    assert [ex["pred"] for ex in r["examples"]] == [int(np.argmax(w)) for w in want]
    tokens = [[len(GPT2Tokenizer().encode(" " + e)) for e in ex["endings"]] for ex in lines]
    assert [ex["pred_norm"] for ex in r["examples"]] == [int(np.argmax(np.array(w) / t)) for w, t in zip(want, tokens)]
    chars = [[len(e) for e in ex["endings"]] for ex in lines]
    assert [ex["pred_norm_char"] for ex in r["examples"]] == [int(np.argmax(np.array(w) / c)) for w, c in zip(want, chars)]
    assert r["acc"] == np.mean([ex["pred"] == ex["label"] for ex in r["examples"]]) and r["n"] == 8
    assert r["examples"][0]["ind"] == 0 and r["examples"][0]["source_id"] == "activitynet~v_0"
    assert "acc_norm" in capsys.readouterr().out
    assert main(["eval", "hellaswag", str(path), "--data", str(tmp_path / "hs.jsonl"), "--out",
                 str(tmp_path / "r.json")]) == 2  # an existing results file is kept


def test_hellaswag_results_do_not_depend_on_the_batch_size(hf_model, tmp_path):
    _, path = hf_model
    hellaswag_file(tmp_path / "hs.jsonl", n=6, seed=1)
    runs = []
    for b in ("1", "7"):
        assert main(["eval", "hellaswag", str(path), "--data", str(tmp_path / "hs.jsonl"), "--batch-size", b,
                     "--out", str(tmp_path / f"r{b}.json")]) == 0
        runs.append(json.loads((tmp_path / f"r{b}.json").read_text()))
    for key in ("pred", "pred_norm", "pred_norm_char"):
        assert [e[key] for e in runs[0]["examples"]] == [e[key] for e in runs[1]["examples"]]
    np.testing.assert_allclose([[x["loglik"] for x in e["endings"]] for e in runs[0]["examples"]],
                               [[x["loglik"] for x in e["endings"]] for e in runs[1]["examples"]], atol=1e-5)


@pytest.mark.parametrize("stride", [None, 12])
def test_eval_loss_on_a_prepared_dataset_equals_transformers_over_the_same_windows(hf_model, tmp_path, stride):
    from jaxgpt.data.shards import prepare_shards

    model, path = hf_model
    rng = random.Random(2)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "d.jsonl").write_text("".join(
        json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))}) + "\n" for _ in range(40)))
    prepare_shards([str(tmp_path / "src")], tmp_path / "ds", GPT2Tokenizer().meta(), workers=1, shard_tokens=300,
                   val_fraction=0.5, log=lambda s: None)
    args = ["eval", "loss", str(path), "--data", str(tmp_path / "ds"), "--batch-size", "3", "--out",
            str(tmp_path / "loss.json")] + (["--stride", str(stride)] if stride else [])
    assert main(args) == 0
    r = json.loads((tmp_path / "loss.json").read_text())
    stream = np.concatenate([np.fromfile(p, np.uint16) for p in sorted((tmp_path / "ds").glob("val-*.bin"))])
    total = count = 0.0
    for start, a, b in windows(len(stream), 32, stride):
        w = torch.tensor(stream[start:start + b + 1].astype(np.int64))
        with torch.no_grad():
            logp = torch.log_softmax(model(w[None, :-1]).logits[0], -1)
        total -= float(sum(logp[j, w[j + 1]] for j in range(a, b)))
        count += b - a
    assert count == len(stream) - 1 == r["tokens_scored"]
    assert abs(r["loss"] - total / count) < 1e-5 and r["perplexity"] == pytest.approx(np.exp(total / count), rel=1e-5)


def test_hellaswag_during_training(tmp_path, tiny_config):
    import dataclasses

    from jaxgpt.train.pretrain import train

    hellaswag_file(tmp_path / "hs.jsonl", n=5)
    cfg = dataclasses.replace(
        tiny_config, data=dataclasses.replace(tiny_config.data, tokenizer="simple"),
        train=dataclasses.replace(tiny_config.train, hellaswag=str(tmp_path / "hs.jsonl"), hellaswag_limit=3))
    train(cfg)
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert len(evals) == 2 and all(0 <= r["hellaswag_acc_norm"] <= 1 and r["hellaswag_acc"] in (0, 1 / 3, 2 / 3, 1)
                                   for r in evals)
    assert (tmp_path / "run" / "hellaswag.png").read_bytes()[:4] == b"\x89PNG"
