"""Random GPT-2s in Hugging Face `transformers` (PyTorch), the reference the converter is checked against."""

from __future__ import annotations

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from jaxgpt.store.convert import name_table
from jaxgpt.model.gpt import GPT

TINY = dict(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4)
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)


def random_hf_model(seed: int = 0, weight_std: float = 0.3, **shape) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel with every tensor random, LayerNorm gains and all biases included."""
    # Eager attention: the plain math, the same on every machine (SDPA may pick other kernels).
    cfg = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=None,
                     bos_token_id=None, pad_token_id=None, attn_implementation="eager")
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p)
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(weight_std * noise)
    return model


def hf_logits(model: GPT2LMHeadModel, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def hf_named_grads(model: GPT2LMHeadModel, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean next-token loss on (x, y) and its gradient for every parameter, by HF name (no prefix)."""
    model.zero_grad()
    logits = model(torch.as_tensor(x, dtype=torch.long)).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.as_tensor(y, dtype=torch.long).flatten())
    loss.backward()
    grads = {n.removeprefix("transformer."): p.grad.numpy().copy() for n, p in model.named_parameters()}
    return float(loss.detach()), grads


def flax_leaf(params, hf_name: str, cfg) -> np.ndarray:
    path, _ = name_table(cfg)[hf_name]
    node = params
    for part in path:
        node = node[part]
    return np.asarray(node)


def jax_logits(cfg, params, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(GPT(cfg).apply({"params": params}, tokens))
