"""Training from pretrained GPT-2 weights (`train.init_from`), converted or read straight from HF."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hf_reference import random_hf_model

from jaxgpt.model import objectives
from jaxgpt.recipe import apply_overrides, load_config_file
from jaxgpt.errors import UserError
from jaxgpt.model.gpt import GPT
from jaxgpt.store.loader import convert_model, load_pretrained
from jaxgpt.train.pretrain import Trainer

GPT2_VOCAB_TINY = dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny GPT-2 with the real vocabulary, as a Hugging Face directory and converted to jaxgpt."""
    root = tmp_path_factory.mktemp("pretrained")
    random_hf_model(seed=5, weight_std=0.1, **GPT2_VOCAB_TINY).save_pretrained(root / "hf")
    convert_model(root / "hf", root / "jax")
    return root


def _config(tiny_config, tmp_path, init_from, **data):
    model = dataclasses.replace(tiny_config.model, block_size=32, n_layer=4, n_embd=64)  # shape is overridden
    return dataclasses.replace(
        tiny_config, model=model,
        data=dataclasses.replace(tiny_config.data, tokenizer="gpt2", **data),
        train=dataclasses.replace(tiny_config.train, init_from=str(init_from), max_steps=1, log_interval=1,
                                  eval_interval=1, sample_tokens=1, out_dir=str(tmp_path / "ft")),
    )


@pytest.mark.parametrize("kind", ["hf", "jax"])
def test_training_starts_from_the_pretrained_weights(pretrained, tiny_config, tmp_path, kind):
    trainer = Trainer(_config(tiny_config, tmp_path, pretrained / kind))
    m = trainer.cfg.model
    assert (m.n_layer, m.n_embd, m.vocab_size, m.block_size) == (2, 32, 50257, 32)
    trainer.run()
    first = json.loads((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()[0])

    # The first step's loss is the pretrained model's loss on that batch, with its positions cut to 32.
    cfg, params = load_pretrained(pretrained / "hf")
    params = {**params, "wpe": {"embedding": params["wpe"]["embedding"][:32]}}
    (windows,) = trainer.task.batch(0)
    x = np.asarray(windows[:, :, :]).reshape(-1, 33)  # (B, T + 1)
    cross = dataclasses.replace(cfg, block_size=32)
    total, sums = objectives.language_model(GPT(cross))(params, {}, (x[:, :-1], x[:, 1:]), None)
    expected = total / sums["count"]
    assert abs(first["loss"] - float(expected)) < 1e-5
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["model"]["n_layer"] == 2 and saved["train"]["init_from"] == str(pretrained / kind)


def test_init_from_refuses_what_does_not_fit(pretrained, tiny_config, tmp_path):
    cfg = _config(tiny_config, tmp_path, pretrained / "jax")
    with pytest.raises(UserError, match="exceeds the 64 positions"):
        Trainer(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, block_size=128)))
    with pytest.raises(UserError, match="set --data.tokenizer=gpt2"):
        Trainer(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer="char")))
    with pytest.raises(UserError, match="does not exist"):
        Trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(tmp_path / "no"))))


@pytest.mark.slow  # a 124M model trained for a few steps on 2 cores: about a minute
def test_finetuning_gpt2_124m_shape_lowers_the_validation_loss(tiny_config, corpus, tmp_path):
    """The shipped recipe, shortened, from a randomly initialised 124M-shaped GPT-2 read from HF files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp_path / "gpt2")  # transformers' own random init
    cfg = load_config_file(Path(__file__).parent.parent / "configs" / "finetune_gpt2_shakespeare.py")
    cfg = apply_overrides(cfg, [
        f"--train.init_from={tmp_path / 'gpt2'}", f"--train.out_dir={tmp_path / 'run'}",
        f"--data.source={corpus}", f"--data.cache_dir={tmp_path / 'data'}", "--model.block_size=64",
        "--train.batch_size=4", "--train.max_steps=12", "--train.learning_rate=1e-3", "--train.min_lr=1e-3",
        "--train.warmup_steps=0", "--train.eval_interval=4", "--train.eval_steps=2", "--train.sample_interval=0",
        "--train.sample_tokens=1", "--train.progress=false", "--model.dropout=0",
    ])
    Trainer(cfg).run()
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 3 and val[2] < val[1] < val[0], val
