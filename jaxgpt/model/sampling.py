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


def _truncated(logits: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """Logits (B, V) scaled by the temperature, those outside the top k and the top-p mass set to -inf.
    Settings are numbers (every row alike; top_k, top_p None when off) or (B, 1) arrays (a row's own; top_k 0
    and top_p 1 when off)."""
    # Shifted so the best logit is 0 before scaling, and the temperature kept a float32 number above 0: a tiny
    # temperature then sends the others to -inf (greedy in the limit) instead of overflowing to inf or NaN.
    tiny = float(jnp.finfo(jnp.float32).tiny)
    temperature = max(temperature, tiny) if isinstance(temperature, float) else jnp.maximum(temperature, tiny)
    logits = (logits - jnp.max(logits, axis=-1, keepdims=True)) / temperature
    # With a row's own settings, sorting the vocabulary (most of a small model's step on a CPU) runs only when
    # some row asks for top-k or top-p: `cond` takes one branch at run time.
    if isinstance(top_k, jax.Array):
        logits = jax.lax.cond(jnp.any(top_k > 0), _keep_top_k, lambda x, _: x, logits, top_k)
    elif top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1) smallest kept logit
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if isinstance(top_p, jax.Array):
        logits = jax.lax.cond(jnp.any(top_p < 1), _keep_top_p, lambda x, _: x, logits, top_p)
    elif top_p is not None and top_p < 1:
        logits = _keep_top_p(logits, top_p)
    return logits


def _keep_top_k(logits: jax.Array, top_k: jax.Array) -> jax.Array:
    """Each row's top_k (B, 1) logits (0: all), the rest -inf."""
    V = logits.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)  # (B, 1)
    kth = jnp.take_along_axis(jnp.sort(logits, axis=-1)[:, ::-1], k - 1, axis=-1)  # (B, 1)
    return jnp.where(logits < kth, -jnp.inf, logits)


def _keep_top_p(logits: jax.Array, top_p) -> jax.Array:
    """The smallest set of each row's logits whose mass reaches top_p (a number or (B, 1); 1 keeps all)."""
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V) descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # A token stays if the mass before it is < top_p.
    n_keep = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)  # (B, 1)
    cutoff = jnp.where(top_p >= 1, -jnp.inf, cutoff)  # a row's top_p of 1 keeps every token
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None,
                  top_p: float | None) -> jax.Array:
    """Pick one token per row of logits (B, V): greedy at temperature 0, else filtered sampling."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    return jax.random.categorical(key, _truncated(logits, temperature, top_k, top_p), axis=-1)


def sample_rows(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
                top_p: jax.Array) -> jax.Array:
    """One token per row of logits (B, V), each row with its own key and settings (B,): temperature (0:
    greedy), top_k (0: off), top_p (1: off). A row's token depends on its own logits, key and settings only,
    so a server's requests do not change each other's output."""
    greedy = jnp.argmax(logits, axis=-1)  # (B,)

    def draw():
        truncated = _truncated(logits, temperature[:, None], top_k[:, None], top_p[:, None])
        return jnp.where(temperature == 0, greedy, jax.vmap(jax.random.categorical)(keys, truncated))

    return jax.lax.cond(jnp.all(temperature == 0), lambda: greedy, draw)  # nothing drawn when all are greedy


def prefill(model: GPT, params, tokens: jax.Array, cache: KVCache, pos) -> tuple[jax.Array, KVCache]:
    """Read tokens (B, T) into the cache at `pos`: (the next token's logits (B, V), the cache). Only the last
    position is projected onto the vocabulary (for GPT-2 a fifth of a 64-token chunk's work otherwise)."""
    x, cache = model.apply({"params": params}, tokens, cache=cache, pos=pos, method=GPT.hidden_states)
    return model.apply({"params": params}, x[:, -1:], method=GPT.logits)[:, 0], cache  # (B, V)


@functools.partial(jax.jit, static_argnames=("model", "steps", "temperature", "top_k", "top_p", "eot_id"))
def _segment(params, prompt, key, done, *, model: GPT, steps: int, temperature: float, top_k, top_p, eot_id):
    """Prefill `prompt` (B, P) and decode `steps` tokens, rows already `done` (B,) emitting eot_id only;
    returns (tokens (B, steps), n_done, done)."""
    B, P = prompt.shape
    cache = KVCache.init(model.config, B, P + steps)
    last, cache = prefill(model, params, prompt, cache, 0)  # (B, V)
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

    carry = (jnp.int32(0), last, cache, out, done, key)
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
