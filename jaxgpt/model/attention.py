"""Attention kernels and the choice between them.

`attend` is softmax attention written as two batched products over head-major keys and values (with the
weights explicit, for dropout or a KV cache); `causal_attention` is the training path's, with its backward
pass written out, and `recomputed_attention` the same whose backward computes the weights again instead of
keeping them (for accelerators without a fused kernel); cuDNN's fused kernel (through `jax.nn.dot_product_attention`) is used on a GPU where it
compiles; Pallas's TPU flash attention (`pallas_attention`) on a TPU for the shapes it takes
(`pallas_supports`), run per device under a mesh. `attention_implementation` decides which, once, before
anything is traced.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash
from jax.sharding import PartitionSpec as P

from jaxgpt.errors import UserError

MASKED = -1e30  # added to a masked score: its weight is exactly 0, and a float32 sum with it stays finite


def causal_mask(T: int) -> jax.Array:
    """(T, T), True where a query may attend: itself and the positions before it."""
    return jnp.tril(jnp.ones((T, T), bool))


def _bias(mask, heads: int) -> jax.Array:
    """The mask (T, S) or (B, T, S) as an additive bias with `heads` axes of 1 after the batch's."""
    bias = jnp.where(mask, 0.0, MASKED)
    bias = bias if bias.ndim == 3 else bias[None]  # (1 | B, T, S)
    return bias.reshape(bias.shape[0], *(1,) * heads, *bias.shape[1:])  # (1 | B, 1.., T, S)


def attend(q, k, v, mask, on_probs=None, q_layout: str = "bhtd"):
    """Softmax attention of q, laid out as `q_layout` ("bhtd" (B, H, T, D) or "bthd" (B, T, H, D)), over
    head-major k and v (B, KV, S, D), where each of the KV key/value heads serves H / KV consecutive query
    heads; mask (T, S), or (B, T, S) with each row's own, is True where a query may attend; `on_probs`
    transforms the (B, H, T, S) weights (dropout). Returns y laid out as q, and the float32 weights (B, H, T, S)."""
    H, KV = q.shape[q_layout.index("h")], k.shape[1]
    if KV < H:  # grouped: each key/value head meets its G query heads in one product, nothing repeated
        return _attend_grouped(q, k, v, mask, on_probs, q_layout)
    scores = jnp.einsum(f"{q_layout},bhsd->bhts", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    # The mask as an added (T, S) bias, never a select against a scalar, which XLA's CPU backend materialises
    # at the scores' full shape (benchmarks/RESULTS.md).
    probs = jax.nn.softmax(scores + _bias(mask, 1), axis=-1)
    if on_probs is not None:
        probs = on_probs(probs)
    return jnp.einsum(f"bhts,bhsd->{q_layout}", probs.astype(v.dtype), v), probs  # q's layout


def _attend_grouped(q, k, v, mask, on_probs, q_layout: str):
    """`attend` with fewer key/value heads (KV) than query heads (H = KV * G)."""
    KV = k.shape[1]
    shape = q.shape
    grouped = q_layout.replace("h", "kg")  # "bkgtd" or "btkgd"
    h = q_layout.index("h")
    q = q.reshape(*shape[:h], KV, shape[h] // KV, *shape[h + 1:])  # (B, KV, G, T, D) or (B, T, KV, G, D)
    scores = jnp.einsum(f"{grouped},bksd->bkgts", q, k).astype(jnp.float32) / math.sqrt(shape[-1])  # (B, KV, G, T, S)
    probs = jax.nn.softmax(scores + _bias(mask, 2), axis=-1)
    probs = probs.reshape(shape[0], -1, *probs.shape[3:])  # (B, H, T, S)
    if on_probs is not None:
        probs = on_probs(probs)
    y = jnp.einsum(f"bkgts,bksd->{grouped}", probs.reshape(scores.shape).astype(v.dtype), v)
    return y.reshape(shape), probs  # q's layout


@jax.custom_vjp
def causal_attention(q, k, v):
    """Causal softmax attention of head-major q, k, v (B, H, T, D) -> (B, H, T, D), with its backward pass
    written out: from the saved weights, four batched products and one row sum.

    On a CPU XLA runs this faster than `jax.nn.dot_product_attention` (whose einsums read (B, T, H, D)) and
    than the differentiated `attend` (benchmarks/RESULTS.md).
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


@jax.custom_vjp
def recomputed_attention(q, k, v):
    """`causal_attention` whose backward pass computes the weights again from q and k instead of keeping them:
    each layer then keeps its (B, H, T, D) q, k and v for the backward pass rather than (B, H, T, T) float32
    weights, for one more scores product and softmax. The choice where no fused kernel runs on a GPU or TPU
    (`attention_implementation`)."""
    return _causal_forward(q, k, v)[0]


def _recompute_forward(q, k, v):
    return _causal_forward(q, k, v)[0], (q, k, v)


def _recompute_backward(saved, dy):
    # The barrier keeps XLA from merging this recomputation with the forward pass's, which would keep the
    # weights alive after all.
    q, k, v = jax.lax.optimization_barrier(saved)
    return _causal_backward(_causal_forward(q, k, v)[1], dy)


recomputed_attention.defvjp(_recompute_forward, _recompute_backward)


@functools.cache
def cudnn_compiles(shape: tuple[int, ...], dtype: str, device=None) -> bool:
    """Whether cuDNN's fused attention, forward and backward, compiles for q/k/v of this (B, T, H, D) shape
    on `device` (default: JAX's default device; `jaxgpt plan` passes a GPU that is not attached)."""
    def loss(q):
        return jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn").astype(jnp.float32).sum()

    placed = None if device is None else jax.sharding.SingleDeviceSharding(device)
    try:
        jax.jit(jax.value_and_grad(loss)).lower(jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=placed)).compile()
    except Exception:  # unsupported GPU, cuDNN version, shape or dtype: any failure means "use XLA"
        return False
    return True


PALLAS_DTYPES = ("float32", "bfloat16")  # Mosaic has no float16 loads
PALLAS_SEQ_BLOCK = 128  # the kernel's smallest key block: T must be a multiple of it
PALLAS_HEAD_SPAN = 128  # one vector register's lanes: a head size up to it, or a multiple of it


def pallas_supports(shape: tuple[int, ...], dtype: str) -> bool:
    """Whether Pallas's TPU flash attention takes q/k/v of this (B, T, H, D) shape and dtype: T a positive
    multiple of 128, a head size D up to 128 or a multiple of 128, float32 or bfloat16."""
    T, D = shape[1], shape[-1]
    return (dtype in PALLAS_DTYPES and T > 0 and T % PALLAS_SEQ_BLOCK == 0
            and 0 < D and (D <= PALLAS_HEAD_SPAN or D % PALLAS_HEAD_SPAN == 0))


def _pallas_blocks(T: int) -> pallas_flash.BlockSizes:
    """One tile size for every block of the forward and backward kernels: the largest of 512, 256 and 128
    that divides T (fewer, larger grid steps; a (512, 512) float32 score tile is 1 MiB of VMEM). One batch
    row per step."""
    b = next(size for size in (512, 256, PALLAS_SEQ_BLOCK) if T % size == 0)
    return pallas_flash.BlockSizes(
        block_q=b, block_k_major=b, block_k=b, block_b=1,
        block_q_major_dkv=b, block_k_major_dkv=b, block_q_dkv=b, block_k_dkv=b,
        block_q_dq=b, block_k_major_dq=b, block_k_dq=b,
    )


def _pallas_flash(q, k, v):
    """Causal flash attention of head-major q, k, v (B, H, T, D) -> (B, H, T, D) on the devices it is given."""
    T, D = q.shape[2], q.shape[3]
    return pallas_flash.flash_attention(q, k, v, causal=True, sm_scale=1 / math.sqrt(D), block_sizes=_pallas_blocks(T))


def _head_major_spec(shape: tuple[int, ...], mesh) -> P:
    """The PartitionSpec of a (B, H, T, D) array on `mesh` by the active logical rules: B over the
    `batch` axes, H over the `heads` axis, T and D whole. A mesh axis is left out where it has size 1, is
    manual already (inside another shard_map), is used by an earlier dimension, or (with the other axes
    of its dimension) does not divide that dimension."""
    usable = {name for name, size in mesh.shape.items() if size > 1 and name not in mesh.manual_axes}
    spec, used = [], set()
    for dim, entry in zip(shape, nn.logical_to_mesh_axes(("batch", "heads", None, None))):
        names = tuple(a for a in ((entry,) if isinstance(entry, str) else entry or ()) if a in usable and a not in used)
        if not names or dim % math.prod(mesh.shape[a] for a in names):
            spec.append(None)
        else:
            spec.append(names[0] if len(names) == 1 else names)
            used.update(names)
    return P(*spec)


def pallas_attention(q, k, v):
    """Causal softmax attention of head-major q, k, v (B, H, T, D) -> (B, H, T, D) by Pallas's TPU flash
    attention kernel; the shape must satisfy `pallas_supports`.

    XLA cannot partition a Pallas kernel (it would gather the whole batch onto every device), so under a
    mesh (`jax.sharding.get_abstract_mesh()` set, as `jaxgpt.train.sharding.activation_rules` does while the
    train step is traced) the kernel runs inside `jax.shard_map`, each device on its own batch rows and
    heads, as the active logical rules lay them out (`_head_major_spec`). Off a TPU it runs only in
    Pallas's TPU interpret mode (`jax.experimental.pallas.tpu.force_tpu_interpret_mode`).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.are_all_axes_manual:
        return _pallas_flash(q, k, v)
    spec = _head_major_spec(q.shape, mesh)  # (B, H, T, D)
    # Manual over every axis: an axis the spec leaves out gets whole copies of q, k, v, and the same output.
    # check_vma off: the kernel's outputs declare no mesh axes they vary over, which the check requires.
    return jax.shard_map(_pallas_flash, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                         check_vma=False)(q, k, v)


def attention_implementation(setting: str, backend: str, dtype: str, shape: tuple[int, ...],
                             probe=cudnn_compiles) -> str:
    """The attention kernel for q/k/v (B, T, H, D): "xla" (`causal_attention`, compiled by XLA), "recompute"
    (`recomputed_attention`), "cudnn" (`jax.nn.dot_product_attention`'s cuDNN implementation) or "pallas"
    (`pallas_attention`).

    "auto" takes Pallas's flash attention on a TPU for the shapes it supports (`pallas_supports`, no
    trial compilation: the rule is static); cuDNN's fused (flash) attention on a GPU, in a 16-bit compute
    dtype, with a head size it supports, when a trial compilation of this shape succeeds (`probe`, asked
    only on a GPU); otherwise XLA's, as "recompute" on a GPU or TPU and "xla" on a CPU. "cudnn" and
    "pallas" ask for their kernel outright and are refused in one line where it cannot run.
    """
    if setting == "pallas" and not (backend == "tpu" and pallas_supports(shape, dtype)):
        raise UserError(f"model.attention=pallas does not run here ({backend}, {dtype}, sequence {shape[1]}, head "
                        f"size {shape[-1]}); it needs a TPU, model.dtype float32 or bfloat16, a model.block_size "
                        "that is a multiple of 128 and a head size up to 128 or a multiple of 128; "
                        "use --model.attention=auto")
    fits = backend == "gpu" and dtype in ("bfloat16", "float16") and shape[-1] % 8 == 0 and shape[-1] <= 128
    if setting == "cudnn" and not (fits and probe(shape, dtype)):
        raise UserError(f"model.attention=cudnn does not run here ({backend}, {dtype}, head size {shape[-1]}); it "
                        "needs an NVIDIA GPU, a 16-bit model.dtype and a head size that is a multiple of 8 up to 128; "
                        "use --model.attention=auto")
    if setting != "auto":
        return setting
    # Without a fused kernel an accelerator's step keeps q, k, v rather than every layer's (B, H, T, T)
    # weights; a CPU keeps the weights, which is faster there and its memory is not the limit.
    unfused = "xla" if backend == "cpu" else "recompute"
    if backend == "tpu":
        return "pallas" if pallas_supports(shape, dtype) else unfused
    return "cudnn" if fits and probe(shape, dtype) else unfused
