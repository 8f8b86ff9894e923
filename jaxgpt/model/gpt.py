"""GPT-2 as Flax linen modules: one small module per concept, parameters named as in OpenAI's release.

The tree of parameters is `wte, wpe, h_0 .. h_{n-1} {ln_1, attn {c_attn, c_proj}, ln_2, mlp {c_fc, c_proj}},
ln_f`. A linen `Dense` kernel is laid out (in, out), the same as GPT-2's Conv1D weight, so converting
weights is a renaming. The output head is tied to `wte` (`GPT.head_weight`, the one place both the logits
and the fused losses read it).

The modern decoder options of `ModelConfig` change this tree only where they must: rotary positions drop
`wpe` (model/rope.py), grouped-query attention narrows `c_attn` to q | k | v of (H + 2 KV) heads, QK-norm
adds `attn.q_norm` and `attn.k_norm`, SwiGLU doubles `c_fc` to gate | up, RMSNorm keeps only each norm's
`scale`, `bias=False` drops the biases, and an untied head adds `lm_head` (V, C). GPT-2 is the default.

Each weight declares its logical sharding axes where it is created (`vocab`, `embed`, `heads`, `mlp`;
`nn.with_logical_partitioning`), and the residual stream is pinned to the `batch` axis
(`nn.with_logical_constraint`); `jaxgpt.train.sharding` maps these names onto a device mesh. Outside such a
mapping (one device, sampling, a user's own `apply`) both are no-ops.

Attention's kernels, and the choice between them, are in `jaxgpt.model.attention`. The model knows nothing of
tokenizers, files or training. Incremental decoding takes an explicit KV cache
(a pytree of arrays) and returns the updated one, so sampling stays a pure function.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt.config import ModelConfig
from jaxgpt.errors import UserError
from jaxgpt.model import rope
from jaxgpt.model.attention import (
    attend,
    attention_implementation,
    causal_attention,
    causal_mask,
    cudnn_compiles,
    pallas_attention,
    pallas_supports,
    recomputed_attention,
)

RESIDUAL = ("batch", None, None)  # logical axes of the (B, T, C) residual stream: split by batch only


class KVCache(NamedTuple):
    """Keys and values for positions [0, max_len): one (B, n_head, max_len, head_dim) array per layer.

    One buffer per layer (not one stacked array) lets XLA write each layer's new entries in place inside
    the decode loop; with a stacked array it copied the whole cache for every layer and token. Heads come
    before positions because that is the layout attention's two matrix products read: with positions first,
    XLA transposed a copy of every layer's whole cache for every new token.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @staticmethod
    def init(config: ModelConfig, batch: int, max_len: int) -> KVCache:
        shape = (batch, config.kv_heads, max_len, config.head_dim)  # a key/value head serves several query heads

        def zeros():
            return tuple(jnp.zeros(shape, jnp.dtype(config.dtype)) for _ in range(config.n_layer))

        return KVCache(zeros(), zeros())


def _dense(features: int, config: ModelConfig, name: str, axes: tuple[str, str], std: float = 0.02,
           bias: bool = True):
    """A Dense layer whose kernel (in, out) has logical axes `axes` and whose bias follows the output axis,
    applied to (..., in) -> (..., features) through a (N, in) product.

    The product is 2-D on purpose: with two leading dimensions, (B, T, C), the weight gradient contracts
    over both, and XLA's CPU backend then copies a transposed (C', B*T) gradient first (for the MLP, with
    GELU's tanh computed again inside the copy); see benchmarks/RESULTS.md, "a 3-D input to a dense layer".
    """
    layer = nn.Dense(
        features, name=name, use_bias=bias, dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
    )

    def apply(x):
        return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], features)  # (N, in) -> (N, out) -> (..., out)

    return apply


def _norm(config: ModelConfig, name: str, rms: bool = False) -> nn.Module:
    """The model's normalisation (`config.norm`; `rms` forces RMSNorm), over the last axis; weights in float32
    arithmetic. RMSNorm's one weight is `scale`, as LayerNorm's is (plus its `bias`)."""
    numerics = dict(epsilon=config.layer_norm_eps, name=name, dtype=jnp.dtype(config.dtype),
                    param_dtype=jnp.dtype(config.param_dtype))
    if rms or config.norm == "rmsnorm":
        return nn.RMSNorm(**numerics)
    return nn.LayerNorm(use_bias=config.bias, **numerics)


def positions(pos, T: int) -> jax.Array:
    """The positions of a chunk of T tokens starting at `pos`: (T,) for an int or scalar, (B, T) for (B,)."""
    pos = jnp.asarray(pos)
    return pos[..., None] + jnp.arange(T).reshape((1,) * pos.ndim + (T,))


def _residual_std(config: ModelConfig) -> float:
    # GPT-2 scales projections into the residual stream so its variance does not grow with depth.
    return 0.02 / math.sqrt(2 * config.n_layer)


def for_backend(config: ModelConfig, batch: int, backend: str | None = None, probe=cudnn_compiles) -> ModelConfig:
    """The config the model runs with on this backend: `attention` decided (one of "xla", "recompute",
    "cudnn", "pallas") for (batch, block_size) inputs, once and before anything is traced. `probe` is
    cuDNN's trial compilation, asked only on a GPU."""
    backend = backend or jax.default_backend()
    shape = (batch, config.block_size, config.n_head, config.head_dim)
    how = attention_implementation(config.attention, backend, config.dtype, shape, probe)
    return dataclasses.replace(config, attention=how)


class CausalSelfAttention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, deterministic: bool, layer_cache=None, pos=0):
        """x: (B, T, C), its first token at position `pos`. With `layer_cache=(k, v)` of (B, KV, S, D), writes
        this chunk's keys and values at `pos` and attends to the cache up to each query's own position;
        returns (y, updated (k, v) or None)."""
        cfg = self.config
        B, T, C = x.shape
        H, KV, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
        qkv = _dense((H + 2 * KV) * D, cfg, "c_attn", ("embed", "heads"), bias=cfg.qkv_bias)(x)  # (B, T, (H+2KV)D)
        qkv = qkv.reshape(B, T, H + 2 * KV, D)  # (B, T, H + 2KV, D): the query heads, then keys', then values'
        q, k, v = qkv[:, :, :H], qkv[:, :, H:H + KV], qkv[:, :, H + KV:]  # (B, T, H|KV|KV, D)
        if cfg.qk_norm:
            q, k = _norm(cfg, "q_norm", rms=True)(q), _norm(cfg, "k_norm", rms=True)(k)  # each head on its own
        q_pos = positions(pos, T)  # (T,), or (B, T) when each row starts at its own position
        if cfg.position == "rope":
            inv_freq = rope.inverse_frequencies(cfg)  # (D/2,)
            q, k = rope.rotate(q, q_pos, inv_freq), rope.rotate(k, q_pos, inv_freq)

        if layer_cache is not None:  # decoding: write this chunk's keys and values, attend to the cache
            cache_k, cache_v = layer_cache  # (B, KV, S, D) each
            k_new, v_new = (a.transpose(0, 2, 1, 3).astype(cache_k.dtype) for a in (k, v))  # (B, KV, T, D)
            if q_pos.ndim == 1:  # every row at `pos`
                k = jax.lax.dynamic_update_slice(cache_k, k_new, (0, 0, pos, 0))  # (B, KV, S, D)
                v = jax.lax.dynamic_update_slice(cache_v, v_new, (0, 0, pos, 0))
            else:  # row b at pos[b] (a server's slots)
                write = jax.vmap(lambda c, new, p: jax.lax.dynamic_update_slice(c, new, (0, p, 0)))
                k, v = write(cache_k, k_new, pos), write(cache_v, v_new, pos)  # (B, KV, S, D)
            layer_cache = (k, v)
            keys = jnp.arange(k.shape[2]).reshape((1,) * q_pos.ndim + (-1,))  # (1, S) or (1, 1, S)
            mask = keys <= q_pos[..., None]  # (T, S) or (B, T, S): causal over the cache
            # q as the projection leaves it, (B, T, H, D): decoding reads it faster than head-major.
            y, _ = attend(q, k, v, mask, q_layout="bthd")  # (B, T, H, D)
        elif cfg.attention == "cudnn":  # `for_backend` chose cuDNN's fused kernel: (B, T, heads, D), GQA native
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")  # (B, T, H, D)
        else:
            # Head-major (B, heads, T, D); the training kernels want every query head's own keys and values.
            q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
            if KV < H:  # key/value head j serves query heads j*G .. j*G + G - 1 (G = H / KV), as in Hugging Face
                k, v = jnp.repeat(k, H // KV, axis=1), jnp.repeat(v, H // KV, axis=1)  # (B, H, T, D)
            if cfg.dropout > 0 and not deterministic:
                # Attention-probability dropout, as in GPT-2, acts on the weights themselves, so training with
                # dropout always takes `attend`, whichever kernel was chosen; evaluation keeps that kernel.
                y, _ = attend(q, k, v, causal_mask(T), lambda probs: nn.Dropout(cfg.dropout)(probs, deterministic=False))
            elif cfg.attention == "pallas" and pallas_supports((B, T, H, D), cfg.dtype):
                # Pallas's TPU flash attention, per device under a mesh. `for_backend` checked block_size; a shorter
                # or otherwise unsupported T (a user's own `apply`) takes XLA's kernel.
                y = pallas_attention(q, k, v)  # (B, H, T, D)
            elif cfg.attention == "recompute":
                y = recomputed_attention(q, k, v)  # (B, H, T, D), keeping q, k, v rather than the weights
            else:
                y = causal_attention(q, k, v)  # (B, H, T, D)
            y = y.transpose(0, 2, 1, 3)  # (B, T, H, D)

        y = y.reshape(B, T, H * D)  # (B, T, H*D): heads side by side again
        y = _dense(C, cfg, "c_proj", ("heads", "embed"), std=_residual_std(cfg), bias=cfg.bias)(y)
        y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
        return y, layer_cache


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.config
        width = cfg.mlp_width
        if cfg.mlp == "swiglu":  # c_fc holds the gate's kernel and then the up projection's: one product
            gate, up = jnp.split(_dense(2 * width, cfg, "c_fc", ("embed", "mlp"), bias=cfg.bias)(x), 2, axis=-1)
            h = nn.silu(gate) * up  # (B, T, width)
        else:
            h = _dense(width, cfg, "c_fc", ("embed", "mlp"), bias=cfg.bias)(x)  # (B, T, width)
            # GPT-2's tanh-approximated GELU, or ReLU squared
            h = nn.gelu(h, approximate=True) if cfg.mlp == "gelu" else jnp.square(nn.relu(h))
        h = _dense(cfg.n_embd, cfg, "c_proj", ("mlp", "embed"), std=_residual_std(cfg), bias=cfg.bias)(h)  # (B, T, C)
        return nn.Dropout(cfg.dropout)(h, deterministic=deterministic)


class Block(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, deterministic: bool, layer_cache=None, pos=0):
        a, layer_cache = CausalSelfAttention(self.config, name="attn")(
            _norm(self.config, "ln_1")(x), deterministic, layer_cache, pos
        )
        x = x + a
        x = x + MLP(self.config, name="mlp")(_norm(self.config, "ln_2")(x), deterministic)
        return x, layer_cache


@functools.cache
def _block_class(remat: str) -> type[Block]:
    """Block, or Block recomputed in the backward pass: "full" keeps only its input, "dots" also keeps the
    outputs of its matrix products without a batch dimension (the weight products) and recomputes the rest."""
    if remat == "none":
        return Block
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if remat == "dots" else None
    return nn.remat(Block, policy=policy, static_argnums=(2,))  # argument 2 (`deterministic`; self is 0) is static


class GPT(nn.Module):
    """GPT-2 language model. `__call__(tokens)` -> logits (B, T, vocab_size) in float32."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        embed = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
        init = nn.initializers.normal(0.02)
        self.wte = nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=nn.with_logical_partitioning(
            init, ("vocab", "embed")), **embed)
        if cfg.position == "learned":
            self.wpe = nn.Embed(cfg.block_size, cfg.n_embd, embedding_init=nn.with_logical_partitioning(
                init, (None, "embed")), **embed)
        if not cfg.tie_embeddings:  # the output head's own (V, C) weight, laid out as the token embedding
            self.lm_head = nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=nn.with_logical_partitioning(
                init, ("vocab", "embed")), **embed)
        self.h = [_block_class(cfg.remat)(cfg, name=f"h_{i}") for i in range(cfg.n_layer)]
        self.ln_f = _norm(cfg, "ln_f")
        self.drop = nn.Dropout(cfg.dropout)

    def hidden_states(self, tokens, deterministic: bool = True, cache: KVCache | None = None, pos=0):
        """Final-norm outputs (B, T, C), and the updated cache when one is given."""
        cfg = self.config
        B, T = tokens.shape
        x = self.wte(tokens)  # (B, T, C)
        if cfg.position == "learned":
            if isinstance(pos, int) and pos + T > cfg.block_size:
                raise UserError(f"this model learned {cfg.block_size} positions and cannot read {pos + T} tokens at "
                                f"once; use a context of at most {cfg.block_size} (rotary positions, "
                                "model.position=rope, have no such limit)")
            at = positions(pos, T)  # (T,) or (B, T)
            x = x + self.wpe(at if at.ndim == 2 else at[None])  # (B, T, C) + (1 | B, T, C)
        x = nn.with_logical_constraint(self.drop(x, deterministic=deterministic), RESIDUAL)
        ks, vs = [], []
        for i, block in enumerate(self.h):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i])
            x, layer_cache = block(x, deterministic, layer_cache, pos)
            # Left to itself, XLA carried the embedding table's FSDP layout (C split) into the activations
            # and gathered weights and activations back and forth; pinned, each layer is one weight gather.
            x = nn.with_logical_constraint(x, RESIDUAL)
            if cache is not None:
                ks.append(layer_cache[0])
                vs.append(layer_cache[1])
        return self.ln_f(x), (None if cache is None else KVCache(tuple(ks), tuple(vs)))

    def head_weight(self) -> jax.Array:
        """The output head's (V, C) weight: the token embedding when tied (GPT-2), else `lm_head`."""
        return self.wte.embedding if self.config.tie_embeddings else self.lm_head.embedding

    def features(self, tokens, deterministic: bool = True):
        """(hidden states (B, T, C), head weight (V, C)): what the fused losses project and score."""
        return self.hidden_states(tokens, deterministic)[0], self.head_weight()

    def logits(self, x):
        """Project hidden states (B, T, C) onto the vocabulary with the tied embedding -> float32."""
        # An einsum against the head as stored (V, C), not `wte.attend` (x @ wte.T): XLA's CPU backend then runs
        # a matrix-vector kernel when decoding, not a loop over a transposed view.
        dt = jnp.dtype(self.config.dtype)
        return jnp.einsum("btc,vc->btv", x.astype(dt), self.head_weight().astype(dt)).astype(jnp.float32)

    def __call__(self, tokens, deterministic: bool = True, cache: KVCache | None = None, pos=0):
        """Args:
            tokens: (B, T) int token ids, T <= block_size - pos.
            deterministic: False turns dropout on (needs a 'dropout' rng).
            cache: optional KVCache; the chunk is written at `pos` and attends to earlier cached positions.
            pos: position of tokens[:, 0]: an int or a traced scalar, or (B,) with a position for each row
                (decoding sequences of different lengths together; needs a cache).
        Returns:
            logits (B, T, vocab_size) float32, or (logits, new_cache) when a cache is given.
        """
        x, new_cache = self.hidden_states(tokens, deterministic, cache, pos)
        logits = self.logits(x)
        return logits if cache is None else (logits, new_cache)


class GPTClassifier(nn.Module):
    """A GPT whose output layer is an n-class head read at each example's last real token (the book's
    chapter 6). Parameters: {"gpt": <GPT's>, "head": {"kernel" (C, n), "bias" (n,)}}; the head is float32.
    Padding after an example's last token cannot change its class: attention is causal."""

    config: ModelConfig
    n_classes: int

    def setup(self):
        self.gpt = GPT(self.config)
        self.head = nn.Dense(self.n_classes, kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("embed", None)), bias_init=nn.initializers.zeros)

    def __call__(self, tokens, lengths, deterministic: bool = True):
        """tokens (B, T), lengths (B,) real tokens per row -> class logits (B, n_classes) float32."""
        h, _ = self.gpt.hidden_states(tokens, deterministic)  # (B, T, C)
        last = h[jnp.arange(h.shape[0]), lengths - 1].astype(jnp.float32)  # (B, C)
        return self.head(last)  # (B, n_classes)


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def init_boxed(module: nn.Module, key: jax.Array):
    """Random initial parameters of a GPT or a GPTClassifier, each weight boxed with its logical axes
    (`nn.LogicallyPartitioned`); dummy inputs fix the shapes. `nn.unbox` gives the plain arrays."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    extra = (jnp.ones((1,), jnp.int32),) if isinstance(module, GPTClassifier) else ()
    return module.init(key, tokens, *extra)["params"]


def init_params(config: ModelConfig, key: jax.Array):
    """Random GPT-2 initialisation (plain arrays)."""
    return nn.unbox(init_boxed(GPT(config), key))
