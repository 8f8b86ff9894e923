"""Inside the model: the residual stream after every block, a logit lens, and activation patching.

    python examples/inside.py --model out/shakespeare_char --source "ROMEO:" --target "JULIET"

- The residual stream is read with Flax's `capture_intermediates` (every Block's output), no hooks edited
  into the model.
- The logit lens puts each layer's residual through the final LayerNorm and the tied head: what the model
  would predict if it stopped there.
- Activation patching runs a `target` prompt with one layer's residual at one position taken from the
  `source` run (`nn.intercept_methods`), and measures how far the last position's prediction moves toward
  the source's. Patching every position of a layer reproduces the source run exactly.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
from common import setup

from jaxgpt.model.gpt import Block


def residuals(model, params, tokens) -> list[jax.Array]:
    """The residual stream after each block: n_layer arrays (B, T, C)."""
    _, state = model.apply({"params": params}, tokens, capture_intermediates=lambda m, _: isinstance(m, Block))
    found = state["intermediates"]
    return [found[f"h_{i}"]["__call__"][0][0] for i in range(model.config.n_layer)]  # (x, cache) -> x


def logit_lens(model, params, tokens) -> jax.Array:
    """(n_layer, B, T, vocab) float32: each layer's residual read through the final LayerNorm and the head."""
    stack = jnp.stack(residuals(model, params, tokens))  # (L, B, T, C)
    return model.apply({"params": params}, stack, method=lambda m, x: jax.vmap(lambda h: m.logits(m.ln_f(h)))(x))


def patched(model, params, tokens, layer: int, source: jax.Array, positions) -> jax.Array:
    """The logits of `tokens` with block `layer`'s output at `positions` replaced by `source` (B, T, C)."""
    def swap(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, Block) and context.module.name == f"h_{layer}" and context.method_name == "__call__":
            x, cache = out
            return x.at[:, positions].set(source[:, positions]), cache
        return out

    with nn.intercept_methods(swap):
        return model.apply({"params": params}, tokens)


def main(model_dir: str = "", source: str = "ROMEO:", target: str = "JULIET") -> dict:
    model, params, tok, _ = setup(model_dir)
    src, tgt = jnp.array([tok.encode(source)]), jnp.array([tok.encode(target)])
    assert src.shape == tgt.shape, "source and target prompts need the same number of tokens"
    lens = logit_lens(model, params, src)  # (L, 1, T, V)
    for i in range(model.config.n_layer):
        top = jnp.argmax(lens[i, 0, -1])
        print(f"logit lens, layer {i}: next token {tok.decode([int(top)])!r}")
    src_res, src_logits = residuals(model, params, src), model.apply({"params": params}, src)
    tgt_logits = model.apply({"params": params}, tgt)
    want = int(jnp.argmax(src_logits[0, -1]))  # the source run's prediction at the last position

    def score(logits):  # log-probability of the source's prediction at the last position
        return float(jax.nn.log_softmax(logits[0, -1])[want])

    effects = jnp.array([[score(patched(model, params, tgt, layer, src_res[layer], [p])) - score(tgt_logits)
                          for p in range(tgt.shape[1])] for layer in range(model.config.n_layer)])  # (L, T)
    print(f"patching source {source!r} into target {target!r}: change in log p({tok.decode([want])!r}) at the end")
    for layer in range(model.config.n_layer):
        print(f"  layer {layer}: " + " ".join(f"{float(e):+.2f}" for e in effects[layer]))
    return {"lens": lens, "effects": effects, "residuals": src_res, "source_logits": src_logits}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="a model directory (default: a small random char GPT)")
    parser.add_argument("--source", default="ROMEO:")
    parser.add_argument("--target", default="JULIET")
    args = parser.parse_args()
    main(args.model, args.source, args.target)
