"""Shared fixtures: strict numerics, a tiny model config and a small generated corpus."""

import dataclasses
import os
import tempfile

# JAX on the CPU alone, in this process and the ones it starts: the GPU and TPU compilers that the test
# extras install (for `jaxgpt plan`) are then only used to compile, and never look for hardware.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The runs of the suite keep JAX's compilation cache in a folder of their own, not in the user's.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxgpt-test-jax-cache-"))

import jax  # noqa: E402
import pytest

from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig  # noqa: E402

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


def save_bpe_model(path, block_size: int = 64, n_layer: int = 2, n_embd: int = 32, n_head: int = 2):
    """A tiny GPT with GPT-2's vocabulary (random weights) saved as a jaxgpt model directory."""
    from jaxgpt.store import checkpoint
    from jaxgpt.model.gpt import init_params
    from jaxgpt.tokenizer.kinds import GPT2Tokenizer

    cfg = ModelConfig(vocab_size=50257, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    checkpoint.save_model(path, Config(model=cfg, data=DataConfig(tokenizer="gpt2")),
                          init_params(cfg, jax.random.key(0)), GPT2Tokenizer().meta(), {})
    return path


def last_logged_step(run_dir) -> int:
    """The step of the last complete metrics.jsonl record (the last line may be half written)."""
    import json

    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-2])["step"] if len(lines) > 1 else 0
    except (OSError, ValueError, KeyError):
        return 0


def sigkill_at(command, run_dir, step: int, cwd, env, timeout: float = 240):
    """Start `command`, kill it with SIGKILL once `run_dir` has logged `step` and holds at least one
    finished checkpoint (Orbax saves in the background, so on a slow machine the first save may still
    be in flight steps later); returns its exit status."""
    import signal
    import subprocess
    import time

    def finished_checkpoint() -> bool:
        folder = run_dir / "checkpoints"
        return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())

    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while ((last_logged_step(run_dir) < step or not finished_checkpoint())
           and proc.poll() is None and time.time() < deadline):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return proc.returncode


@pytest.fixture
def fixtures_dir():
    """Committed test inputs (see tests/fixtures/*.py for how each was made)."""
    from pathlib import Path

    return Path(__file__).parent / "fixtures"


# The bad-input tables' shared run and model (built once per session); imported last, because
# bad_input_support reads TINY_MODEL and write_corpus from this module.
from bad_input_support import base  # noqa: E402, F401
