import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.model.attention import causal_attention
from jaxgpt.config import ModelConfig
from jaxgpt.model.gpt import GPT, KVCache, count_params, init_params


@pytest.mark.parametrize("name,expected", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200),
])
def test_preset_parameter_counts(name, expected):
    cfg = ModelConfig.preset(name)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))  # no memory allocated
    assert count_params(shapes) == expected


def test_parameter_names_follow_gpt2(tiny_model):
    params = init_params(tiny_model, jax.random.key(0))
    assert set(params) == {"wte", "wpe", "h_0", "h_1", "ln_f"}
    block = jax.tree.map(jnp.shape, params["h_1"])
    C = tiny_model.n_embd
    assert block["attn"]["c_attn"]["kernel"] == (C, 3 * C)  # (in, out) like GPT-2's Conv1D
    assert block["mlp"]["c_fc"]["kernel"] == (C, 4 * C)
    assert set(block) == {"ln_1", "attn", "ln_2", "mlp"}
    assert params["wte"]["embedding"].shape == (tiny_model.vocab_size, C)


def test_gpt2_initialisation_statistics():
    cfg = ModelConfig(vocab_size=512, block_size=64, n_layer=8, n_head=4, n_embd=256)
    p = init_params(cfg, jax.random.key(0))
    assert abs(float(jnp.std(p["h_0"]["mlp"]["c_fc"]["kernel"])) - 0.02) < 1e-3
    # residual projections are scaled down by sqrt(2 * n_layer) = 4
    assert abs(float(jnp.std(p["h_0"]["mlp"]["c_proj"]["kernel"])) - 0.005) < 3e-4
    assert float(jnp.abs(p["h_0"]["attn"]["c_attn"]["bias"]).max()) == 0.0
    assert float(jnp.abs(p["ln_f"]["scale"] - 1).max()) == 0.0


def test_logits_shape_and_tied_head(tiny_model):
    params = init_params(tiny_model, jax.random.key(0))
    tokens = jnp.arange(10)[None] % tiny_model.vocab_size
    logits = GPT(tiny_model).apply({"params": params}, tokens)
    assert logits.shape == (1, 10, tiny_model.vocab_size) and logits.dtype == jnp.float32
    # The head is the token embedding itself: with wte zeroed, every logit is exactly zero.
    zeroed = jax.tree.map(lambda x: x, params)
    zeroed["wte"] = {"embedding": jnp.zeros_like(params["wte"]["embedding"])}
    assert float(jnp.abs(GPT(tiny_model).apply({"params": zeroed}, tokens)).max()) == 0.0


def test_causality(tiny_model):
    """Changing token t leaves the logits of every position before t unchanged."""
    params = init_params(tiny_model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, tiny_model.vocab_size)
    changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % tiny_model.vocab_size)
    a = GPT(tiny_model).apply({"params": params}, tokens)
    b = GPT(tiny_model).apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, :9], b[:, :9])
    assert float(jnp.abs(a[:, 9:] - b[:, 9:]).max()) > 1e-4


def test_kv_cache_matches_full_recomputation(tiny_model):
    model = GPT(tiny_model)
    params = init_params(tiny_model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 16), 0, tiny_model.vocab_size)
    full = model.apply({"params": params}, tokens)
    cache = KVCache.init(tiny_model, 3, 16)
    pieces, pos = [], 0
    for n in (5, 1, 1, 4, 5):  # a prefill, single-token steps, then chunks
        logits, cache = model.apply({"params": params}, tokens[:, pos:pos + n], cache=cache, pos=pos)
        pieces.append(logits)
        pos += n
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=2e-5)


def test_dropout_needs_a_key_and_is_deterministic_per_key(tiny_model):
    cfg = dataclasses.replace(tiny_model, dropout=0.2)
    model, params = GPT(cfg), init_params(cfg, jax.random.key(0))
    tokens = jnp.zeros((1, 8), jnp.int32)
    run = lambda k: model.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": k})
    np.testing.assert_array_equal(run(jax.random.key(3)), run(jax.random.key(3)))
    assert float(jnp.abs(run(jax.random.key(3)) - run(jax.random.key(4))).max()) > 0
    eval_a = model.apply({"params": params}, tokens)
    np.testing.assert_array_equal(eval_a, model.apply({"params": params}, tokens))


def test_no_qkv_bias_and_bfloat16_compute(tiny_model):
    cfg = dataclasses.replace(tiny_model, qkv_bias=False, dtype="bfloat16")
    params = init_params(cfg, jax.random.key(0))
    assert "bias" not in params["h_0"]["attn"]["c_attn"]
    assert params["h_0"]["attn"]["c_attn"]["kernel"].dtype == jnp.float32  # weights stay float32
    logits = GPT(cfg).apply({"params": params}, jnp.zeros((1, 4), jnp.int32))
    assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())


def test_kv_cache_layout_is_heads_before_positions(tiny_model):
    cache = KVCache.init(tiny_model, 2, 12)
    assert len(cache.k) == len(cache.v) == tiny_model.n_layer
    assert cache.k[0].shape == (2, tiny_model.n_head, 12, tiny_model.head_dim)


def test_logits_are_the_tied_embedding_product(tiny_model):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, tiny_model.vocab_size)
    h, _ = model.apply({"params": params}, tokens, method=GPT.hidden_states)
    want = np.asarray(h) @ np.asarray(params["wte"]["embedding"]).T
    np.testing.assert_allclose(model.apply({"params": params}, tokens), want, atol=1e-5)


def _naive_causal_attention(q, k, v):
    """Textbook attention, (B, H, T, D): softmax(q k^T / sqrt(D) with the future at -inf) v."""
    T, D = q.shape[2], q.shape[3]
    scores = q @ jnp.swapaxes(k, -1, -2) / np.sqrt(D)
    scores = scores + jnp.where(np.tril(np.ones((T, T), bool)), 0.0, -jnp.inf)[None, None]
    return jax.nn.softmax(scores, axis=-1) @ v


def test_causal_attention_backward_matches_autodiff_of_the_textbook_formula():
    rng = np.random.default_rng(3)
    q, k, v, dy = (jnp.asarray(rng.standard_normal((2, 3, 9, 5)), jnp.float32) for _ in range(4))
    y, vjp = jax.vjp(causal_attention, q, k, v)
    y_ref, vjp_ref = jax.vjp(_naive_causal_attention, q, k, v)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    for ours, ref, name in zip(vjp(dy), vjp_ref(dy), "qkv"):
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"d{name}")
    # bfloat16 in, bfloat16 gradients out, close to the float32 ones
    grads = jax.vjp(causal_attention, *(a.astype(jnp.bfloat16) for a in (q, k, v)))[1](dy.astype(jnp.bfloat16))
    for ours, ref in zip(grads, vjp_ref(dy)):
        assert ours.dtype == jnp.bfloat16
        np.testing.assert_allclose(ours.astype(jnp.float32), ref, atol=0.1)
