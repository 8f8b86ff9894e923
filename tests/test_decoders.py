"""Llama and Qwen3 weights in and out: random models made by transformers (`LlamaForCausalLM`,
`Qwen3ForCausalLM`) are the reference, with grouped-query attention, tied and untied heads and Llama 3's
rope scaling; logits, greedy generation and the round trip back into transformers must agree."""

import json

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from jaxgpt.errors import UserError
from jaxgpt.model.gpt import GPT
from jaxgpt.model.sampling import generate
from jaxgpt.store import decoders
from jaxgpt.store.loader import convert_model, load, read_config

SHAPE = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
             max_position_embeddings=128, attn_implementation="eager", bos_token_id=None, eos_token_id=None,
             pad_token_id=None)
MODELS = {
    "qwen3-gqa-tied": (Qwen3ForCausalLM, Qwen3Config, dict(num_key_value_heads=2, head_dim=12, rope_theta=1e6,
                                                             tie_word_embeddings=True, rms_norm_eps=1e-6)),
    "qwen3-mha-untied": (Qwen3ForCausalLM, Qwen3Config, dict(num_key_value_heads=6, head_dim=8,
                                                               tie_word_embeddings=False)),
    "llama3-scaled-untied": (LlamaForCausalLM, LlamaConfig, dict(
        num_key_value_heads=3, rope_theta=5e5, tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),
    "llama-mqa-tied-bias": (LlamaForCausalLM, LlamaConfig, dict(num_key_value_heads=1, tie_word_embeddings=True,
                                                                  attention_bias=True, mlp_bias=True)),
}


def random_model(name: str, seed: int = 0):
    cls, config_cls, options = MODELS[name]
    torch.manual_seed(seed)
    model = cls(config_cls(**SHAPE, **options)).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn_like(p)
            p.copy_(1 + 0.1 * noise if "norm" in pname else 0.2 * noise)
    return model


@pytest.fixture(scope="module", params=list(MODELS))
def saved(request, tmp_path_factory):
    """(transformers model, its directory) for each family and option set."""
    model = random_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return model, path


TOKENS = np.random.default_rng(0).integers(0, 97, (2, 40))  # past the llama3 model's original context of 16


def _hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()


def test_logits_equal_transformers(saved):
    model, path = saved
    loaded = load(path)
    ours = GPT(loaded.config).apply({"params": loaded.params}, TOKENS)
    np.testing.assert_allclose(np.asarray(ours), _hf_logits(model, TOKENS), atol=1e-4, rtol=0)


def test_greedy_generation_equals_transformers(saved):
    model, path = saved
    loaded = load(path)
    prompt = TOKENS[:1, :7]
    with torch.no_grad():
        want = model.generate(torch.as_tensor(prompt), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    got = generate(GPT(loaded.config), loaded.params, prompt, 12, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_export_reloads_in_transformers_with_the_same_logits(saved, tmp_path):
    model, path = saved
    convert_model(path, tmp_path / "jx")
    assert read_config(tmp_path / "jx") == read_config(path)
    convert_model(tmp_path / "jx", tmp_path / "back", to="hf")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    assert type(again) is type(model)
    np.testing.assert_allclose(_hf_logits(again, TOKENS), _hf_logits(model, TOKENS), atol=1e-5, rtol=0)


def test_sharded_directories_read_and_write(tmp_path):
    model = random_model("llama3-scaled-untied")
    model.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    loaded = load(tmp_path / "hf")
    decoders.save(loaded.config, loaded.params, tmp_path / "out", max_shard_bytes=60_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    np.testing.assert_allclose(_hf_logits(again, TOKENS), _hf_logits(model, TOKENS), atol=1e-5, rtol=0)


def test_config_mapping_reads_both_rope_forms(tmp_path):
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64}
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
    legacy = {**base, "rope_theta": 5e5, "rope_scaling": scaling}
    current = {**base, "rope_parameters": {"rope_theta": 5e5, **legacy["rope_scaling"]}}
    got = []
    for i, d in enumerate((legacy, current)):
        (tmp_path / f"{i}.json").write_text(json.dumps(d))
        got.append(decoders.model_config(tmp_path / f"{i}.json"))
    assert got[0] == got[1]
    cfg = got[0]
    assert (cfg.rope_scaling, cfg.rope_factor, cfg.rope_context, cfg.rope_theta) == ("llama3", 32.0, 32, 5e5)


@pytest.mark.parametrize("change,message", [
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
    ({"use_sliding_window": True}, "sliding-window"),
    ({"num_key_value_heads": 3}, "multiple of model.n_kv_head"),
    ({"attention_bias": True}, "mlp_bias"),
])
def test_unsupported_configs_are_refused_in_one_line(tmp_path, change, message):
    d = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
         "num_attention_heads": 2, "max_position_embeddings": 64, **change}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match=message) as e:
        decoders.model_config(tmp_path / "config.json")
    assert "\n" not in str(e.value)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    model = random_model("qwen3-gqa-tied")
    model.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, "num_hidden_layers": 3}))
    with pytest.raises(UserError, match="lacks tensor 'model.layers.2"):
        load(tmp_path)


def test_a_gpt2_shaped_model_with_modern_options_has_no_hf_class(tmp_path):
    from jaxgpt.config import ModelConfig
    from jaxgpt.model.gpt import init_params

    cfg = ModelConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8, position="rope")
    with pytest.raises(UserError, match="no Hugging Face architecture"):
        decoders.save(cfg, init_params(cfg, jax.random.key(0)), tmp_path / "x")
    assert not (tmp_path / "x").exists()
