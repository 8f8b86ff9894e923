"""Shared fixtures: strict numerics, a tiny model config and a small generated corpus."""

import dataclasses

import jax
import pytest

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig

# Implicit rank promotion hides shape bugs; make it an error everywhere in the tests.
jax.config.update("jax_numpy_rank_promotion", "raise")

TINY_MODEL = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture
def tiny_model() -> ModelConfig:
    return TINY_MODEL


def write_corpus(path, n_lines: int = 400) -> str:
    """A deterministic play-like text of a few thousand characters."""
    names = ["ROMEO", "JULIET", "NURSE"]
    words = "the night is sweet and love is kind but the day is long and cold".split()
    lines = []
    for i in range(n_lines):
        lines.append(f"{names[i % 3]}:\n{' '.join(words[(i * 7 + j) % len(words)] for j in range(8))}.\n")
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture
def corpus(tmp_path) -> str:
    return write_corpus(tmp_path / "corpus.txt")


@pytest.fixture
def tiny_config(tmp_path, corpus) -> Config:
    """A run that trains in a few seconds on the generated corpus, writing under tmp_path."""
    return Config(
        model=dataclasses.replace(TINY_MODEL),
        data=DataConfig(source=corpus, tokenizer="char", cache_dir=str(tmp_path / "data")),
        train=TrainConfig(out_dir=str(tmp_path / "run"), batch_size=8, max_steps=20, learning_rate=3e-3,
                          warmup_steps=5, decay_steps=20, log_interval=5, eval_interval=10, eval_steps=2,
                          sample_interval=0,
                          sample_tokens=20, progress=False),
    )


@pytest.fixture
def fixtures_dir():
    """Committed test inputs (see tests/fixtures/*.py for how each was made)."""
    from pathlib import Path

    return Path(__file__).parent / "fixtures"


# The bad-input tables' shared run and model (built once per session); imported last, because
# bad_input_support reads TINY_MODEL and write_corpus from this module.
from bad_input_support import base  # noqa: E402, F401
