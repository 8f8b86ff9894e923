"""The modern decoder options of ModelConfig (rotary positions and their scaling, RMSNorm, gated and squared
MLPs, grouped-query attention, QK-norm, free head size, no biases, an untied head): each changes what it
says and nothing else, decoding from a KV cache equals the full forward pass under every combination of
the attention options, and GPT-2 stays GPT-2."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgpt.config import ARCHITECTURE, Config, ModelConfig, validate
from jaxgpt.errors import UserError
from jaxgpt.model import rope
from jaxgpt.model.attention import attend, causal_mask
from jaxgpt.model.gpt import GPT, KVCache, init_params
from jaxgpt.model.sampling import generate

BASE = ModelConfig(vocab_size=61, block_size=16, n_layer=2, n_head=4, n_embd=32)
OTHERS = [dict(norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False, tie_embeddings=False),
          dict(mlp="relu2", n_inner=48), dict(norm="rmsnorm", tie_embeddings=False), dict(mlp="swiglu", bias=False)]
# Every combination of what touches the KV cache, with the per-token options taken in turn.
ATTENTION = list(itertools.product(["learned", "rope"], [4, 2, 1], [False, True], [0, 12]))


def _config(position, kv, qk_norm, head_size, i) -> ModelConfig:
    return dataclasses.replace(BASE, position=position, n_kv_head=kv, qk_norm=qk_norm, head_size=head_size,
                               **OTHERS[i % len(OTHERS)])


def _random(cfg: ModelConfig, seed: int = 0):
    """Parameters with every weight random (norm gains and biases too), so no option hides behind a zero."""
    params = init_params(cfg, jax.random.key(seed))
    flat = traverse_util.flatten_dict(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(flat))
    return traverse_util.unflatten_dict({path: a + 0.1 * jax.random.normal(k, a.shape) for (path, a), k in
                                         zip(flat.items(), keys)})


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_rows_at_their_own_positions_decode_as_each_alone(position):
    """pos (B,): each row of a cache at its own length (a server's slots) gets what it gets decoded alone."""
    cfg = dataclasses.replace(BASE, position=position, n_kv_head=2)
    params, model = _random(cfg), GPT(cfg)
    tokens = jax.random.randint(jax.random.key(3), (3, 12), 0, cfg.vocab_size)
    lengths = [4, 9, 1]  # each row's prompt, read alone into its own cache row
    cache = KVCache.init(cfg, 3, 16)
    step = jax.jit(lambda p, x, c, t: model.apply({"params": p}, x, cache=c, pos=t))
    rows = [step(params, tokens[b:b + 1, :n], jax.tree.map(lambda a: a[b:b + 1], cache), 0)[1]
            for b, n in enumerate(lengths)]
    cache = jax.tree.map(lambda *r: jnp.concatenate(r), *rows)
    full = model.apply({"params": params}, tokens)  # (3, 12, V): causal, so [b, p] is row b read to p alone
    for i in range(3):  # then all rows together, one token each at positions 4, 9, 1 (+ i)
        pos = jnp.array(lengths) + i
        logits, cache = step(params, tokens[jnp.arange(3), pos][:, None], cache, pos)
        np.testing.assert_allclose(logits[:, -1], full[jnp.arange(3), pos], atol=2e-5, rtol=0)


@pytest.mark.parametrize("i,combo", list(enumerate(ATTENTION)), ids=lambda c: "-".join(map(str, c)) if
                         isinstance(c, tuple) else str(c))
def test_cached_decoding_equals_the_full_forward(i, combo):
    cfg = validate(Config(model=_config(*combo, i))).model
    params, model = _random(cfg), GPT(cfg)
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
    full = model.apply({"params": params}, tokens)
    cache = KVCache.init(cfg, 2, 16)
    assert cache.k[0].shape == (2, cfg.kv_heads, 16, cfg.head_dim)  # sized by the key/value heads
    step = jax.jit(lambda p, x, c, t: model.apply({"params": p}, x, cache=c, pos=t))  # t traced, as sampling's
    logits, cache = step(params, tokens[:, :9], cache, 0)  # a prefill chunk
    pieces = [logits]
    for t in range(9, 16):
        logits, cache = step(params, tokens[:, t:t + 1], cache, t)
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=2e-5, rtol=0)


def test_gpt2_is_unchanged_by_the_new_fields():
    """The default config builds exactly GPT-2's tree: no new weight, no missing one."""
    shapes = jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda: init_params(BASE, jax.random.key(0))))
    assert set(shapes) == {"wte", "wpe", "h_0", "h_1", "ln_f"}
    assert shapes["h_0"]["attn"] == {"c_attn": {"kernel": (32, 96), "bias": (96,)},
                                     "c_proj": {"kernel": (32, 32), "bias": (32,)}}
    assert shapes["h_0"]["mlp"]["c_fc"]["kernel"] == (32, 128) and "bias" in shapes["ln_f"]


def test_each_option_shapes_its_weights():
    def shapes(**options):
        cfg = dataclasses.replace(BASE, **options)
        tree = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
        return {path: a.shape for path, a in traverse_util.flatten_dict(tree).items()}

    assert ("wpe", "embedding") not in shapes(position="rope")
    assert shapes(n_kv_head=1)[("h_0", "attn", "c_attn", "kernel")] == (32, (4 + 2) * 8)
    assert shapes(head_size=12)[("h_0", "attn", "c_proj", "kernel")] == (48, 32)
    assert shapes(mlp="swiglu", n_inner=40)[("h_0", "mlp", "c_fc", "kernel")] == (32, 80)
    assert shapes(qk_norm=True)[("h_0", "attn", "q_norm", "scale")] == (8,)
    assert ("lm_head", "embedding") in shapes(tie_embeddings=False)
    no_bias = shapes(bias=False, qkv_bias=False, norm="rmsnorm")
    assert not any(p[-1] == "bias" for p in no_bias)
    assert ("ln_f", "bias") not in shapes(bias=False)  # LayerNorm without its bias


def test_gqa_attention_equals_repeated_key_value_heads():
    q = jax.random.normal(jax.random.key(0), (2, 6, 5, 4))  # (B, H, T, D)
    k, v = jax.random.normal(jax.random.key(1), (2, 2, 2, 5, 4))  # (B, KV, S, D) each
    mask = causal_mask(5)
    grouped, probs = attend(q, k, v, mask)
    repeated, want_probs = attend(q, jnp.repeat(k, 3, axis=1), jnp.repeat(v, 3, axis=1), mask)
    np.testing.assert_allclose(grouped, repeated, atol=1e-6)
    np.testing.assert_allclose(probs, want_probs, atol=1e-6)
    bthd, _ = attend(q.transpose(0, 2, 1, 3), k, v, mask, q_layout="bthd")
    np.testing.assert_allclose(bthd.transpose(0, 2, 1, 3), repeated, atol=1e-6)


def test_rope_depends_only_on_relative_position():
    cfg = dataclasses.replace(BASE, position="rope", rope_theta=100.0)
    inv = rope.inverse_frequencies(cfg)
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 8))

    def score(i, j):
        return float(jnp.sum(rope.rotate(q, jnp.array([i]), inv) * rope.rotate(k, jnp.array([j]), inv)))

    assert math.isclose(score(3, 1), score(10, 8), rel_tol=1e-5)
    assert not math.isclose(score(3, 1), score(3, 2), rel_tol=1e-3)


def test_llama3_scaling_divides_low_frequencies_and_keeps_high_ones():
    cfg = dataclasses.replace(BASE, position="rope", head_size=64, rope_theta=5e5, rope_scaling="llama3",
                              rope_factor=8.0, rope_context=1024)
    plain = rope.inverse_frequencies(dataclasses.replace(cfg, rope_scaling="none"))
    scaled = rope.inverse_frequencies(cfg)
    wavelength = 2 * np.pi / plain
    np.testing.assert_array_equal(scaled[wavelength < 1024 / 4], plain[wavelength < 1024 / 4])
    np.testing.assert_allclose(scaled[wavelength > 1024], plain[wavelength > 1024] / 8)
    between = (wavelength >= 256) & (wavelength <= 1024)
    assert between.any() and np.all((scaled[between] <= plain[between]) & (scaled[between] >= plain[between] / 8))
    linear = rope.inverse_frequencies(dataclasses.replace(cfg, rope_scaling="linear"))
    np.testing.assert_allclose(linear, plain / 8)


def test_a_learned_position_model_refuses_a_longer_context_in_one_line():
    params = init_params(BASE, jax.random.key(0))
    with pytest.raises(UserError, match="learned 16 positions and cannot read 17 tokens") as e:
        GPT(BASE).apply({"params": params}, jnp.zeros((1, 17), jnp.int32))
    assert "\n" not in str(e.value)


def test_a_rope_model_reads_past_its_training_context_and_generates():
    cfg = dataclasses.replace(BASE, position="rope", n_kv_head=2)
    params = init_params(cfg, jax.random.key(0))
    logits = GPT(cfg).apply({"params": params}, jnp.zeros((1, 40), jnp.int32))
    assert logits.shape == (1, 40, 61) and bool(jnp.isfinite(logits).all())
    out = generate(GPT(cfg), params, np.arange(5), 20, temperature=0.0)
    assert out.shape == (1, 25)


@pytest.mark.parametrize("change,message", [
    (dict(n_kv_head=3), "multiple of model.n_kv_head"),
    (dict(position="rope", head_size=7), "must be even"),
    (dict(rope_scaling="linear"), "set model.position=rope"),
    (dict(position="rope", rope_factor=0.5), "rope_factor at least 1"),
    (dict(n_embd=30), "divisible by model.n_head"),
    (dict(mlp="geglu"), "model.mlp must be one of"),
    (dict(norm="batchnorm"), "model.norm must be one of"),
    (dict(head_size=-1), "model.head_size must be positive"),
])
def test_impossible_options_are_refused(change, message):
    with pytest.raises(UserError, match=message):
        validate(Config(model=dataclasses.replace(BASE, **change)))


def test_head_size_frees_n_embd_from_n_head():
    cfg = validate(Config(model=dataclasses.replace(BASE, n_embd=30, n_head=4, head_size=8))).model
    logits = GPT(cfg).apply({"params": init_params(cfg, jax.random.key(0))}, jnp.zeros((1, 4), jnp.int32))
    assert logits.shape == (1, 4, 61)


def test_architecture_names_every_field_that_shapes_or_computes_the_model():
    how = {"block_size", "dropout", "dtype", "param_dtype", "attention", "remat"}
    assert set(ARCHITECTURE) == {f.name for f in dataclasses.fields(ModelConfig)} - how


def test_eval_scores_a_rope_run_past_its_context_and_refuses_a_learned_one(tmp_path, tiny_config, capsys):
    """`jaxgpt eval loss --block-size` longer than the context: a rotary model is scored (also with its positions
    stretched), a learned-position model is refused in one line."""
    import json

    from jaxgpt.cli.main import main
    from jaxgpt.train.pretrain import train

    runs = {}
    for position in ("learned", "rope"):
        cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, position=position),
                                  train=dataclasses.replace(tiny_config.train, out_dir=str(tmp_path / position)))
        train(cfg)
        runs[position] = tmp_path / position
    corpus = tiny_config.data.source
    assert main(["eval", "loss", str(runs["learned"]), "--data", corpus, "--block-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "longer than the 16 positions this model learned" in err and "\n" not in err
    for scaling in ([], ["--rope-scaling", "linear"], ["--rope-scaling", "llama3"]):
        out = tmp_path / f"rope{len(scaling)}{scaling[-1] if scaling else ''}.json"
        assert main(["eval", "loss", str(runs["rope"]), "--data", corpus, "--block-size", "32", "--out", str(out),
                     *scaling]) == 0
        r = json.loads(out.read_text())
        assert r["block_size"] == 32 and np.isfinite(r["loss"])
        assert r.get("rope", {}).get("factor") == (2.0 if scaling else None)
    assert main(["eval", "loss", str(runs["learned"]), "--data", corpus, "--rope-scaling", "linear"]) == 2
    assert "learned a table of positions" in capsys.readouterr().err
