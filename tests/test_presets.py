"""The model presets have exactly the published parameter counts, and read their published config.json."""

import json

import jax
import pytest

from jaxgpt.config import Config, ModelConfig, validate
from jaxgpt.model.gpt import count_params, init_params
from jaxgpt.store import decoders

# Unique weights, as the model cards and safetensors headers give them. The Qwen3-0.6B and 1.7B files store
# their tied output head a second time, so their headers count 151,936 x n_embd more (751,632,384 and
# 2,031,739,904).
PUBLISHED = {
    "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200,
    "qwen3-0.6b": 596_049_920, "qwen3-1.7b": 1_720_574_976, "qwen3-4b": 4_022_468_096, "qwen3-8b": 8_190_735_360,
    "llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_presets_have_the_published_parameter_counts(name):
    cfg = validate(Config(model=ModelConfig.preset(name, block_size=128))).model
    n = count_params(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    if cfg.position == "learned":  # GPT-2's counts include the position table of 1,024 rows
        n += (1024 - 128) * cfg.n_embd
    assert n == PUBLISHED[name]


def test_qwen3_header_counts_the_tied_head_twice():
    cfg = ModelConfig.preset("qwen3-0.6b")
    n = count_params(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    assert n + cfg.vocab_size * cfg.n_embd == 751_632_384


# The published config.json files' settings (Qwen/Qwen3-0.6B and meta-llama/Llama-3.2-1B), as the converter
# reads them: the preset is the model they describe.
QWEN3_06B = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "head_dim": 128, "hidden_act": "silu",
             "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 40960, "model_type": "qwen3",
             "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
             "rope_scaling": None, "rope_theta": 1000000, "tie_word_embeddings": True, "use_sliding_window": False,
             "vocab_size": 151936}
LLAMA32_1B = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "head_dim": 64, "hidden_act": "silu",
              "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
              "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
              "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256}


@pytest.mark.parametrize("name,published", [("qwen3-0.6b", QWEN3_06B), ("llama-3.2-1b", LLAMA32_1B)])
def test_presets_are_the_models_their_config_files_describe(tmp_path, name, published):
    (tmp_path / "config.json").write_text(json.dumps(published))
    assert decoders.model_config(tmp_path / "config.json") == ModelConfig.preset(name)
