"""Text generation: one prefill over the prompt, then a compiled decode loop over a preallocated KV cache.

`generate` is a pure function of (params, prompt ids, settings, key). Decoding runs inside one
`jax.lax.while_loop`, so a sample costs one dispatch rather than one per token. When the context fills the
model's position table, generation goes on from a fresh prefill of the last `block_size // 2` tokens.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.errors import UserError
from jaxgpt.model.gpt import GPT, KVCache


def check_settings(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise a UserError for sampling settings that have no meaning."""
    if not temperature >= 0:  # also refuses NaN
        raise UserError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be at least 1 (or unset), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1] (or unset), got {top_p}")


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None,
                  top_p: float | None) -> jax.Array:
    """Pick one token per row of logits (B, V): greedy at temperature 0, else filtered sampling."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    # Shifted so the best logit is 0 before scaling, and the temperature kept a float32 number above 0: a tiny
    # temperature then sends the others to -inf (greedy in the limit) instead of overflowing to inf or NaN.
    temperature = max(temperature, float(jnp.finfo(jnp.float32).tiny))
    logits = (logits - jnp.max(logits, axis=-1, keepdims=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1) smallest kept logit
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V) descending
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest set whose mass reaches top_p: a token stays if the mass before it is < top_p.
        n_keep = jnp.sum(cum - jax.nn.softmax(sorted_logits, axis=-1) < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)  # (B, 1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "steps", "temperature", "top_k", "top_p", "eot_id"))
def _segment(params, prompt, key, done, *, model: GPT, steps: int, temperature: float, top_k, top_p, eot_id):
    """Prefill `prompt` (B, P) and decode `steps` tokens, rows already `done` (B,) emitting eot_id only;
    returns (tokens (B, steps), n_done, done)."""
    B, P = prompt.shape
    cache = KVCache.init(model.config, B, P + steps)
    logits, cache = model.apply({"params": params}, prompt, cache=cache, pos=0)
    out = jnp.zeros((B, steps), jnp.int32)

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < steps) & ~jnp.all(done)

    def body(carry):
        i, last_logits, cache, out, done, key = carry
        key, sub = jax.random.split(key)
        tok = sample_logits(last_logits, sub, temperature, top_k, top_p).astype(jnp.int32)  # (B,)
        if eot_id is not None:
            tok = jnp.where(done, eot_id, tok)  # finished rows keep emitting end-of-text
            done = done | (tok == eot_id)
        out = out.at[:, i].set(tok)
        logits, cache = model.apply({"params": params}, tok[:, None], cache=cache, pos=P + i)
        return i + 1, logits[:, -1], cache, out, done, key

    carry = (jnp.int32(0), logits[:, -1], cache, out, done, key)
    i, _, _, out, done, _ = jax.lax.while_loop(cond, body, carry)
    return out, i, done


def generate(model: GPT, params, prompt_ids, max_new_tokens: int, *, key: jax.Array | None = None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             eot_id: int | None = None) -> np.ndarray:
    """Continue each prompt row by up to `max_new_tokens` tokens.

    Args:
        model, params: a GPT and its parameters.
        prompt_ids: (B, P) or (P,) token ids; a prompt longer than the context keeps its last block_size - 1.
        max_new_tokens: tokens to add; generation stops early once every row has produced `eot_id`.
        key: a jax.random key; may be None when temperature is 0 (greedy decoding draws nothing).
        temperature, top_k, top_p: sampling settings; temperature 0 is greedy decoding.
        eot_id: the end-of-text id, or None to never stop early.
    Returns:
        (B, P + n) numpy int array of prompt and continuation; rows finished early are padded with eot_id.
    """
    check_settings(temperature, top_k, top_p)
    if key is None:
        if temperature > 0:
            raise UserError("sampling at a temperature above 0 needs a key (jax.random.key(seed))")
        key = jax.random.key(0)  # greedy decoding draws nothing
    ids = np.asarray(prompt_ids, dtype=np.int32)
    ids = ids[None] if ids.ndim == 1 else ids
    if ids.shape[1] == 0:
        raise UserError("the prompt is empty; give at least one token (for example a newline)")
    block = model.config.block_size
    if ids.shape[1] >= block:
        warnings.warn(f"prompt of {ids.shape[1]} tokens cropped to its last {block - 1} (the context size)")
        ids = ids[:, -(block - 1):]
    pieces, context, remaining = [ids], ids, max_new_tokens
    done = jnp.zeros((ids.shape[0],), bool)  # rows that have emitted eot_id, carried across refills
    while remaining > 0:
        steps = min(remaining, block - context.shape[1])
        key, sub = jax.random.split(key)
        out, n, done = _segment(params, jnp.asarray(context), sub, done, model=model, steps=steps,
                                temperature=float(temperature), top_k=top_k, top_p=top_p, eot_id=eot_id)
        out = np.asarray(out)[:, : int(n)]
        pieces.append(out)
        remaining -= out.shape[1]
        if out.shape[1] < steps:  # every row reached end-of-text
            break
        # The position table is full: continue from the most recent half of the context.
        context = np.concatenate([context, out], axis=1)[:, -(block // 2):]
    return np.concatenate(pieces, axis=1)
