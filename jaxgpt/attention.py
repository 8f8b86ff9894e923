"""Attention kernels and the choice between them.

`attend` is softmax attention written as two batched products over head-major keys and values (with the
weights explicit, for dropout or a KV cache); `causal_attention` is the training path's, with its backward
pass written out; cuDNN's fused kernel (through `jax.nn.dot_product_attention`) is used on a GPU where it
compiles. `attention_implementation` decides which, once, before anything is traced.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxgpt.errors import UserError


MASKED = -1e30  # added to a masked score: its weight is exactly 0, and a float32 sum with it stays finite


def causal_mask(T: int) -> jax.Array:
    """(T, T), True where a query may attend: itself and the positions before it."""
    return jnp.tril(jnp.ones((T, T), bool))


def attend(q, k, v, mask, on_probs=None, q_layout: str = "bhtd"):
    """Softmax attention of q, laid out as `q_layout` ("bhtd" (B, H, T, D) or "bthd" (B, T, H, D)), over
    head-major k and v (B, H, S, D); mask (T, S) is True where a query may attend; `on_probs` transforms the
    (B, H, T, S) weights (dropout). Returns y laid out as q, and the float32 weights."""
    scores = jnp.einsum(f"{q_layout},bhsd->bhts", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    # The mask as an added (T, S) bias: a select against a scalar made XLA's CPU backend materialise that
    # scalar at the scores' full shape (the whole step 1.01-1.04x faster without it; benchmarks/RESULTS.md).
    probs = jax.nn.softmax(scores + jnp.where(mask, 0.0, MASKED)[None, None], axis=-1)
    if on_probs is not None:
        probs = on_probs(probs)
    return jnp.einsum(f"bhts,bhsd->{q_layout}", probs.astype(v.dtype), v), probs  # q's layout


@jax.custom_vjp
def causal_attention(q, k, v):
    """Causal softmax attention of head-major q, k, v (B, H, T, D) -> (B, H, T, D), with its backward pass
    written out: from the saved weights, four batched products and one row sum.

    On a CPU XLA runs this faster than `jax.nn.dot_product_attention` (whose einsums read (B, T, H, D)) and
    than the differentiated `attend` (the whole step 1.17x and then 1.05x; benchmarks/RESULTS.md).
    """
    return _causal_forward(q, k, v)[0]


def _causal_forward(q, k, v):
    y, probs = attend(q, k, v, causal_mask(q.shape[2]))
    return y, (q, k, v, probs)


def _causal_backward(saved, dy):
    q, k, v, probs = saved  # probs (B, H, T, T) float32, 0 above the diagonal
    dv = jnp.einsum("bhts,bhtd->bhsd", probs.astype(dy.dtype), dy)  # (B, H, T, D)
    dprobs = jnp.einsum("bhtd,bhsd->bhts", dy, v).astype(jnp.float32)  # (B, H, T, T)
    # Softmax's backward; the 1/sqrt(D) of the scores folds in here.
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdims=True)) / math.sqrt(q.shape[-1])
    dscores = dscores.astype(q.dtype)
    dq = jnp.einsum("bhts,bhsd->bhtd", dscores, k)  # (B, H, T, D)
    dk = jnp.einsum("bhts,bhtd->bhsd", dscores, q)  # (B, H, T, D)
    return dq, dk, dv


causal_attention.defvjp(_causal_forward, _causal_backward)


@functools.cache
def cudnn_compiles(shape: tuple[int, ...], dtype: str) -> bool:
    """Whether cuDNN's fused attention, forward and backward, compiles for q/k/v of this (B, T, H, D) shape."""
    def loss(q):
        return jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn").astype(jnp.float32).sum()

    try:
        jax.jit(jax.value_and_grad(loss)).lower(jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))).compile()
    except Exception:  # unsupported GPU, cuDNN version, shape or dtype: any failure means "use XLA"
        return False
    return True


def attention_implementation(setting: str, backend: str, dtype: str, shape: tuple[int, ...],
                             probe=cudnn_compiles) -> str:
    """The attention kernel for q/k/v (B, T, H, D): "xla" (`causal_attention`, compiled by XLA) or "cudnn"
    (`jax.nn.dot_product_attention`'s cuDNN implementation).

    "auto" takes cuDNN's fused (flash) attention on a GPU, in a 16-bit compute dtype, with a head size it
    supports, when a trial compilation of this shape succeeds (`probe`); XLA's everywhere else. "cudnn"
    asks for it outright and is refused in one line where it cannot run.
    """
    fits = backend == "gpu" and dtype in ("bfloat16", "float16") and shape[-1] % 8 == 0 and shape[-1] <= 128
    if setting == "cudnn" and not (fits and probe(shape, dtype)):
        raise UserError(f"model.attention=cudnn does not run here ({backend}, {dtype}, head size {shape[-1]}); it "
                        "needs an NVIDIA GPU, a 16-bit model.dtype and a head size that is a multiple of 8 up to 128; "
                        "use --model.attention=auto")
    if setting != "auto":
        return setting
    return "cudnn" if fits and probe(shape, dtype) else "xla"
