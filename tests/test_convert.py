"""The converter against Hugging Face transformers: logits, loss, gradients, greedy decoding, round trips."""

import json

import jax
import numpy as np
import pytest
from hf_reference import GPT2_SMALL, TINY, flax_leaf, hf_logits, hf_named_grads, jax_logits, random_hf_model
from safetensors.numpy import load_file
from transformers import GPT2LMHeadModel

from jaxgpt.store import convert
from jaxgpt.cli.main import main
from jaxgpt.model.gpt import GPT
from jaxgpt.model.sampling import generate
from jaxgpt.store.loader import load_pretrained, read_tokenizer_meta
from jaxgpt.model.objectives import mean_loss


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_tiny")
    model = random_hf_model(seed=1, weight_std=0.2, **TINY)  # larger weights make float32 error grow
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    """The full GPT-2 124M shape with random weights (about 500 MB on disk)."""
    path = tmp_path_factory.mktemp("hf_124m")
    model = random_hf_model(seed=2, weight_std=0.05, **GPT2_SMALL)
    model.save_pretrained(path)
    return model, path


def _batch(vocab: int, B: int, T: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (B, T + 1))
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("which", ["tiny_hf", "small_hf"])
def test_logits_loss_and_gradients_match_transformers(which, request):
    model, path = request.getfixturevalue(which)
    cfg, params = load_pretrained(path)
    x, y = _batch(cfg.vocab_size, 2, 48)

    np.testing.assert_allclose(jax_logits(cfg, params, x), hf_logits(model, x), rtol=0, atol=1e-4)

    loss, grads = jax.value_and_grad(lambda p: mean_loss(GPT(cfg), p, x, y))(params)
    ref_loss, ref_grads = hf_named_grads(model, x, y)
    assert abs(float(loss) - ref_loss) < 1e-5
    assert set(ref_grads) == set(convert.name_table(cfg))
    for name, ref in ref_grads.items():
        ours = flax_leaf(grads, name, cfg)
        rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
        assert rel < 1e-4, (name, rel)


@pytest.mark.parametrize("preset", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_the_name_table_covers_every_parameter_of_all_four_sizes(preset):
    from jaxgpt.config import ModelConfig
    from jaxgpt.model.gpt import init_params

    cfg = ModelConfig.preset(preset)
    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    leaves = {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    assert leaves == {path: shape for path, shape in convert.name_table(cfg).values()}


def test_greedy_generation_matches_transformers(tiny_hf):
    model, path = tiny_hf
    cfg, params = load_pretrained(path)
    prompt = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 8))
    ours = generate(GPT(cfg), params, prompt, 40, key=jax.random.key(0), temperature=0.0)
    import torch

    ref = model.generate(torch.as_tensor(prompt), max_new_tokens=40, do_sample=False, pad_token_id=0,
                         attention_mask=torch.ones(prompt.shape, dtype=torch.long)).numpy()
    assert ours.shape == (2, 48)
    np.testing.assert_array_equal(ours, ref)


def test_round_trip_hf_jaxgpt_hf_is_bit_identical(tiny_hf, tmp_path, capsys):
    model, path = tiny_hf
    assert main(["convert", str(path), str(tmp_path / "jax")]) == 0
    assert main(["convert", str(tmp_path / "jax"), str(tmp_path / "hf")]) == 0
    assert "-> hf" in capsys.readouterr().out
    before, after = load_file(path / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert set(before) == set(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and np.array_equal(before[name], after[name]), name
    # transformers loads the export and computes the same logits as the original.
    x, _ = _batch(TINY["vocab_size"], 2, 16)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    np.testing.assert_array_equal(hf_logits(reloaded, x), hf_logits(model, x))


def test_openai_tensorflow_fixture_matches_the_same_weights_through_hf(fixtures_dir, tmp_path):
    """The TF checkpoint (written by TensorFlow in OpenAI's layout) and the same weights placed into a
    transformers model by name give the same logits."""
    src = fixtures_dir / "openai_tf"
    cfg, params = load_pretrained(src)
    hparams = json.loads((src / "hparams.json").read_text())
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size) == (hparams["n_layer"], hparams["n_embd"], hparams["n_vocab"])
    import torch

    weights = np.load(src / "weights.npz")
    model = random_hf_model(vocab_size=hparams["n_vocab"], n_positions=hparams["n_ctx"], n_embd=hparams["n_embd"],
                            n_layer=hparams["n_layer"], n_head=hparams["n_head"])
    state = model.state_dict()
    with torch.no_grad():
        for name in convert.name_table(cfg):
            state["transformer." + name].copy_(torch.from_numpy(weights[convert._tf_name(name)].squeeze(0)
                                                                if convert._is_conv(name) else weights[convert._tf_name(name)]))
    model.save_pretrained(tmp_path / "hf")
    _, hf_params = load_pretrained(tmp_path / "hf")
    x, _ = _batch(cfg.vocab_size, 2, hparams["n_ctx"])
    np.testing.assert_array_equal(jax_logits(cfg, params, x), jax_logits(cfg, hf_params, x))
    np.testing.assert_allclose(jax_logits(cfg, params, x), hf_logits(model, x), rtol=0, atol=1e-4)


def test_pytorch_bin_and_sharded_safetensors_read_the_same_weights(tiny_hf, tmp_path):
    model, path = tiny_hf
    _, ref = load_pretrained(path)
    import torch

    # transformers 5 no longer writes pytorch_model.bin; it was torch.save of the state dict.
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text(model.config.to_json_string())
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    for variant in ("bin", "sharded"):
        _, params = load_pretrained(tmp_path / variant)
        assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), params, ref)), variant


def test_export_of_a_trained_run_reproduces_its_logits(tiny_config, tmp_path):
    from jaxgpt.store.loader import load
    from jaxgpt.train.pretrain import train

    train(tiny_config)
    run = tiny_config.train.out_dir
    assert main(["convert", run, str(tmp_path / "hf")]) == 0
    model = load(run)
    x, _ = _batch(model.config.vocab_size, 2, model.config.block_size)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_logits(reloaded, x), jax_logits(model.config, model.params, x), rtol=0, atol=1e-4)
    # The char tokenizer travels with the export and comes back on the way in.
    assert read_tokenizer_meta(tmp_path / "hf") == model.tokenizer_meta
