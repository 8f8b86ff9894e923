"""What every example starts from: a GPT, its parameters, a tokenizer and token windows of Shakespeare.

`setup()` is a small random character-level GPT (seconds on a CPU); `setup("out/shakespeare_char")` is a
trained model from `python train.py` (or any directory `jaxgpt.load` reads), so the examples also run on
a model that has learned something.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxgpt import GPT, ModelConfig, get_tokenizer, init_params, load, load_corpus


def setup(model_dir: str = "", seed: int = 0, n_layer: int = 2, n_embd: int = 32, block_size: int = 32):
    """(model, params, tokenizer, token ids of the corpus): a jaxgpt model directory's, or a small random
    char GPT's over the embedded Shakespeare."""
    text = load_corpus("shakespeare")[:200_000]
    if model_dir:
        loaded = load(model_dir)
        tok = loaded.tokenizer()
        return GPT(loaded.config), loaded.gpt_params, tok, np.asarray(tok.encode(text[:20_000]), np.int32)
    tok = get_tokenizer("char", text)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd)
    return GPT(cfg), init_params(cfg, jax.random.key(seed)), tok, np.asarray(tok.encode(text), np.int32)


def windows(ids: np.ndarray, n: int, length: int, seed: int = 0) -> np.ndarray:
    """`n` random windows of `length` tokens, (n, length)."""
    starts = np.random.default_rng(seed).integers(0, len(ids) - length, n)
    return np.stack([ids[s:s + length] for s in starts])
