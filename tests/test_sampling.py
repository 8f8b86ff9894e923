import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.errors import UserError
from jaxgpt.model.gpt import GPT, init_params
from jaxgpt.model.sampling import generate, sample_logits, sample_rows


def _greedy_by_recomputation(model, params, ids, n):
    ids = np.asarray(ids)[None]
    for _ in range(n):
        ctx = ids[:, -model.config.block_size:]
        logits = model.apply({"params": params}, jnp.asarray(ctx))
        ids = np.concatenate([ids, np.argmax(logits[:, -1], axis=-1)[:, None]], axis=1)
    return ids


def test_cached_greedy_decoding_equals_full_recomputation(tiny_model):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    out = generate(model, params, [3, 1, 4], 12, key=jax.random.key(0), temperature=0)
    np.testing.assert_array_equal(out, _greedy_by_recomputation(model, params, [3, 1, 4], 12))


def test_top_k_one_and_tiny_top_p_are_greedy(tiny_model):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    greedy = generate(model, params, [5, 6], 10, key=jax.random.key(0), temperature=0)
    k1 = generate(model, params, [5, 6], 10, key=jax.random.key(1), temperature=1.0, top_k=1)
    p0 = generate(model, params, [5, 6], 10, key=jax.random.key(2), temperature=1.0, top_p=1e-6)
    np.testing.assert_array_equal(greedy, k1)
    np.testing.assert_array_equal(greedy, p0)


def test_a_tiny_temperature_is_greedy(tiny_model):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    greedy = generate(model, params, [5, 6], 10, temperature=0)
    for t in (1e-30, 1e-300):  # 1e-300 is 0 in float32: must not overflow the logits
        np.testing.assert_array_equal(generate(model, params, [5, 6], 10, key=jax.random.key(3), temperature=t), greedy)
    logits = jnp.array([[0.1, 0.5, 0.3], [2.0, -1.0, 1.0]])
    for seed in range(5):  # every draw is the best token, with no NaN on the way
        np.testing.assert_array_equal(sample_logits(logits, jax.random.key(seed), 1e-300, None, None), [1, 0])


def test_sampling_respects_top_k_and_seed():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    draws = np.asarray(sample_logits(logits, jax.random.key(0), 1.0, 2, None))
    assert set(draws.tolist()) == {0, 1} and 0.55 < np.mean(draws == 0) < 0.70  # 0.5/0.8 = 0.625
    draws = np.asarray(sample_logits(logits, jax.random.key(0), 1.0, None, 0.85))
    assert set(draws.tolist()) == {0, 1, 2}  # 0.5 + 0.3 < 0.85, so the third token is needed
    again = np.asarray(sample_logits(logits, jax.random.key(0), 1.0, None, 0.85))
    np.testing.assert_array_equal(draws, again)


def test_generation_stops_at_end_of_text(tiny_model):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    first = int(generate(model, params, [7], 1, key=jax.random.key(0), temperature=0)[0, -1])
    out = generate(model, params, [[7], [7]], 10, key=jax.random.key(0), temperature=0, eot_id=first)
    assert out.shape == (2, 2) and (out[:, 1] == first).all()


def test_finished_rows_stay_finished_across_a_context_refill(tiny_model):
    """Row 0 ends early; row 1 never ends and runs past the position table, so the context is refilled. Row 0
    must stay finished, although greedy decoding from its refilled context (all eot) would go on."""
    cfg = dataclasses.replace(tiny_model, block_size=8, vocab_size=23)
    model = GPT(cfg)
    params = jax.tree.map(lambda a: 10 * a, init_params(cfg, jax.random.key(1)))  # sharp, varied predictions
    prompts, eot = [[0, 2, 3], [1, 5, 6]], 17
    greedy = generate(model, params, prompts, 12, temperature=0)  # no key needed for greedy decoding
    assert eot in greedy[0, 3:6].tolist() and eot not in greedy[1, 3:].tolist(), greedy  # the setting tested
    assert eot not in generate(model, params, [[eot] * 4], 1, temperature=0)[0, -1:].tolist()  # would go on
    out = generate(model, params, prompts, 12, temperature=0, eot_id=eot)
    first = greedy[0, 3:].tolist().index(eot) + 3
    assert out.shape == (2, 15) and (out[0, first:] == eot).all(), out[0]
    np.testing.assert_array_equal(out[1], greedy[1])


def test_sampling_above_temperature_zero_needs_a_key(tiny_model):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    with pytest.raises(UserError, match="needs a key"):
        generate(model, params, [1], 2, temperature=1.0)


def test_long_generation_and_prompt_cropping(tiny_model):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    out = generate(model, params, [1, 2], 40, key=jax.random.key(0), temperature=1.0)
    assert out.shape == (1, 42)  # past the 16-position table: continues from the recent context
    with pytest.warns(UserWarning, match="cropped"):
        out = generate(model, params, list(range(20)), 3, key=jax.random.key(0), temperature=0)
    assert out.shape == (1, tiny_model.block_size - 1 + 3)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
])
def test_invalid_settings(tiny_model, kwargs, pattern):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    with pytest.raises(UserError, match=pattern):
        generate(model, params, [1], 2, key=jax.random.key(0), **kwargs)


@pytest.mark.parametrize("batch", [1, 3])
def test_batched_greedy_decoding_equals_full_recomputation(tiny_model, batch):
    model, params = GPT(tiny_model), init_params(tiny_model, jax.random.key(0))
    prompts = np.asarray(jax.random.randint(jax.random.key(2), (batch, 4), 0, tiny_model.vocab_size))
    out = generate(model, params, prompts, 10, key=jax.random.key(0), temperature=0)
    for row, prompt in zip(out, prompts):
        np.testing.assert_array_equal(row, _greedy_by_recomputation(model, params, prompt, 10)[0])


def test_sample_rows_gives_each_row_its_own_settings():
    """Rows with their own temperature (0: greedy), top-k and top-p, each drawing with its own key: a row's
    token does not depend on the other rows."""
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4))
    temperature, top_k, top_p = jnp.array([0.0, 1, 1, 1]), jnp.array([0, 1, 0, 2]), jnp.array([1.0, 1, 1e-6, 1])
    draws, rows = [], jax.jit(sample_rows)
    for seed in range(200):
        keys = jax.random.split(jax.random.key(seed), 4)
        draws.append(np.asarray(rows(logits, keys, temperature, top_k, top_p)))
        alone = rows(logits[3:], keys[3:], temperature[3:], top_k[3:], top_p[3:])
        assert int(alone[0]) == draws[-1][3]  # the same row and key alone
    draws = np.array(draws)  # (200, 4)
    assert (draws[:, :3] == 0).all()  # greedy, top-k 1 and a tiny top-p all take the best token
    assert set(draws[:, 3].tolist()) == {0, 1} and 0.5 < np.mean(draws[:, 3] == 0) < 0.75  # top-2: 0.625
    free = sample_rows(logits, jax.random.split(jax.random.key(0), 4), jnp.ones(4), jnp.zeros(4, jnp.int32),
                       jnp.ones(4))
    assert free.shape == (4,)
