"""LoRA adapters: exact no-op at init, unmerged == merged, gradients reach only the adapters, training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY_MODEL

from jaxgpt.model import lora
from jaxgpt.errors import UserError
from jaxgpt.model.gpt import GPT, KVCache, count_params, init_params

CFG = lora.LoraConfig(rank=4, alpha=8.0)
MODEL = GPT(TINY_MODEL)
TOKENS = jax.random.randint(jax.random.key(1), (2, 8), 0, TINY_MODEL.vocab_size)


@pytest.fixture(scope="module")
def params():
    """Base params, shared: dropout and the compute dtype do not change the tree (float32 storage)."""
    return jax.jit(init_params, static_argnums=0)(TINY_MODEL, jax.random.key(0))  # faster than eager


@pytest.fixture(scope="module")
def adapters(params):
    return lora.init_adapters(params, CFG, jax.random.key(2))


def _randomise_b(adapters):
    """Nonzero B everywhere (A stays as initialised), so the adapters change the model."""
    leaves, tree = jax.tree.flatten_with_path(adapters)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    return jax.tree.unflatten(tree, [
        0.1 * jax.random.normal(k, x.shape) if path[-1].key == "b" else x
        for (path, x), k in zip(leaves, keys)
    ])


def _named(tree, name):
    """The leaves called `name` ("a" or "b") of an adapter-shaped tree."""
    return [x for path, x in jax.tree.flatten_with_path(tree)[0] if path[-1].key == name]


def _loss(logits, tokens):
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


def test_fresh_adapters_are_an_exact_no_op(params, adapters):
    assert jax.tree.map(jnp.shape, adapters["h_0"]["attn"]["c_attn"]) == {"a": (32, 4), "b": (4, 96)}
    assert {x.dtype for x in jax.tree.leaves(adapters)} == {jnp.dtype(jnp.float32)}
    base = MODEL.apply({"params": params}, TOKENS)
    np.testing.assert_array_equal(lora.apply(MODEL, params, adapters, CFG, TOKENS), base)
    merged = lora.merge(params, adapters, CFG)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)
    assert merged["wte"]["embedding"] is params["wte"]["embedding"]  # untouched leaves are shared


def test_unmerged_equals_merged(params, adapters):
    adapters = _randomise_b(adapters)
    merged = lora.merge(params, adapters, CFG)
    base = MODEL.apply({"params": params}, TOKENS)
    logits = lora.apply(MODEL, params, adapters, CFG, TOKENS)
    assert np.abs(logits - base).max() > 1e-3  # the adapters really change the model
    np.testing.assert_allclose(logits, MODEL.apply({"params": merged}, TOKENS), atol=1e-5)

    hidden, _ = lora.apply(MODEL, params, adapters, CFG, TOKENS, method=GPT.hidden_states)
    want, _ = MODEL.apply({"params": merged}, TOKENS, method=GPT.hidden_states)
    np.testing.assert_allclose(hidden, want, atol=1e-5)


def test_kv_cache_path(params, adapters):
    adapters = _randomise_b(adapters)
    full = lora.apply(MODEL, params, adapters, CFG, TOKENS)  # (B, T, V), no cache
    decode = jax.jit(lambda tokens, cache, pos: lora.apply(MODEL, params, adapters, CFG, tokens,
                                                           cache=cache, pos=pos))
    cache = KVCache.init(TINY_MODEL, batch=2, max_len=TINY_MODEL.block_size)
    prefill, cache = decode(TOKENS[:, :5], cache, 0)
    np.testing.assert_allclose(prefill, full[:, :5], atol=1e-5)
    step, _ = decode(TOKENS[:, 5:6], cache, 5)  # one token at a traced position, as in sampling
    np.testing.assert_allclose(step, full[:, 5:6], atol=1e-5)


def test_gradients_reach_only_adapters_and_match_merge(params, adapters):
    @jax.jit
    @jax.grad
    def unmerged(ad):  # params are closed over: not differentiated
        return _loss(lora.apply(MODEL, params, ad, CFG, TOKENS), TOKENS)

    @jax.jit
    @jax.grad
    def via_merge(ad):
        return _loss(MODEL.apply({"params": lora.merge(params, ad, CFG)}, TOKENS), TOKENS)

    grads = unmerged(adapters)  # B = 0: only b gets a gradient (x @ a is nonzero)
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)
    assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, adapters)
    assert len(_named(grads, "b")) == 4 * TINY_MODEL.n_layer
    assert all(np.abs(g).max() > 0 for g in _named(grads, "b"))
    assert all(np.all(g == 0) for g in _named(grads, "a"))  # d/da is proportional to b

    adapters = _randomise_b(adapters)
    grads = unmerged(adapters)
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))
    for g, want in zip(jax.tree.leaves(grads), jax.tree.leaves(via_merge(adapters))):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_optimizer_state_is_adapter_sized(params, adapters):
    leaves = jax.tree.leaves(optax.adamw(1e-3).init(adapters))
    shapes = {x.shape for x in jax.tree.leaves(adapters)}
    assert all(x.shape in shapes or x.shape == () for x in leaves)
    n = lora.count(adapters)
    per_block = (32 + 96) * 4 + (32 + 32) * 4 + (32 + 128) * 4 + (128 + 32) * 4  # (in + out) * rank
    assert n == TINY_MODEL.n_layer * per_block
    assert sum(x.size for x in leaves) <= 2 * n + 1  # mu, nu and a step count
    assert n < count_params(params) // 4


def test_targets_select_modules(params):
    adapters = lora.init_adapters(params, lora.LoraConfig(rank=2, targets=("attn.c_attn",)), jax.random.key(0))
    assert jax.tree.map(jnp.shape, adapters) == {
        f"h_{i}": {"attn": {"c_attn": {"a": (32, 2), "b": (2, 96)}}} for i in range(TINY_MODEL.n_layer)
    }
    with pytest.raises(UserError) as err:
        lora.init_adapters(params, lora.LoraConfig(targets=("attn.q_proj",)), jax.random.key(0))
    msg = str(err.value)
    assert "\n" not in msg and "'attn.q_proj'" in msg and "mlp.c_fc" in msg


def test_merge_rejects_adapters_of_another_model(params, adapters):
    with pytest.raises(UserError, match="h_5.attn.c_attn"):
        lora.merge(params, {**adapters, "h_5": adapters["h_0"]}, CFG)


@pytest.mark.parametrize("cfg", [lora.LoraConfig(rank=0), lora.LoraConfig(alpha=0.0)])
def test_rejects_bad_config(params, cfg):
    with pytest.raises(UserError):
        lora.init_adapters(params, cfg, jax.random.key(0))


def test_training_adapters_lowers_loss_and_leaves_base_untouched(params, adapters):
    # Embeddings of a trained-like size (init's 0.02 caps the tied head's logits near zero).
    params = {**params, "wte": {"embedding": 10 * params["wte"]["embedding"]}}
    before = jax.tree.map(np.array, params)
    opt = optax.adamw(1e-2)

    @jax.jit
    def step(ad, state):
        loss, grads = jax.value_and_grad(lambda a: _loss(lora.apply(MODEL, params, a, CFG, TOKENS), TOKENS))(ad)
        updates, state = opt.update(grads, state, ad)
        return optax.apply_updates(ad, updates), state, loss

    state = opt.init(adapters)
    losses = []
    for _ in range(30):
        adapters, state, loss = step(adapters, state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(x, y)


def test_dropout_matches_merged(params, adapters):
    model = GPT(dataclasses.replace(TINY_MODEL, dropout=0.2))
    adapters = _randomise_b(adapters)
    rngs = {"dropout": jax.random.key(4)}
    out = lora.apply(model, params, adapters, CFG, TOKENS, deterministic=False, rngs=rngs)
    assert np.isfinite(out).all()
    assert np.abs(out - lora.apply(model, params, adapters, CFG, TOKENS)).max() > 1e-3  # dropout is on
    want = model.apply({"params": lora.merge(params, adapters, CFG)}, TOKENS, deterministic=False, rngs=rngs)
    np.testing.assert_allclose(out, want, atol=1e-5)  # the same dropout masks


def test_bfloat16_compute(params, adapters):
    model = GPT(dataclasses.replace(TINY_MODEL, dtype="bfloat16"))
    np.testing.assert_array_equal(lora.apply(model, params, adapters, CFG, TOKENS),
                                  model.apply({"params": params}, TOKENS))
    adapters = _randomise_b(adapters)
    merged = model.apply({"params": lora.merge(params, adapters, CFG)}, TOKENS)
    np.testing.assert_allclose(lora.apply(model, params, adapters, CFG, TOKENS), merged, atol=0.1)
