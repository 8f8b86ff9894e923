import dataclasses
from pathlib import Path

import pytest

from jaxgpt import config as config_lib

from jaxgpt import recipe
from jaxgpt.config import Config, ModelConfig
from jaxgpt.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.py")), ids=lambda p: p.name)
def test_every_config_file_loads_and_validates(path):
    cfg = recipe.load_config_file(path)
    assert config_lib.validate(cfg) is cfg


def test_overrides_parse_each_type():
    cfg = recipe.apply_overrides(Config(), [
        "--model.n_layer=3", "--train.learning_rate=0.5", "--model.qkv_bias=false",
        "--train.sample_prompt=a\\nb", "data.tokenizer=gpt2",
    ])
    assert cfg.model.n_layer == 3 and cfg.train.learning_rate == 0.5 and cfg.model.qkv_bias is False
    assert cfg.train.sample_prompt == "a\nb" and cfg.data.tokenizer == "gpt2"
    assert Config().model.n_layer == 12  # the original is untouched (frozen)


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown config key 'model\.n_layers'.*model\.n_layer"):
        recipe.apply_overrides(Config(), ["--model.n_layers=2"])


@pytest.mark.parametrize("override,pattern", [
    ("--model.n_layer=two", "not a valid int"),
    ("--model.qkv_bias=maybe", "not a valid bool"),
    ("--model.n_layer", "section.key=value"),
])
def test_bad_override_values(override, pattern):
    with pytest.raises(UserError, match=pattern):
        recipe.apply_overrides(Config(), [override])


@pytest.mark.parametrize("override,pattern", [
    ("--model.n_layer=0", "model.n_layer must be positive"),
    ("--train.learning_rate=-1", "learning_rate must be positive"),
    ("--model.n_head=5", "divisible by model.n_head"),
    ("--model.dropout=1.5", "dropout"),
    ("--data.val_fraction=1", "val_fraction"),
    ("--train.grad_accum=3", "divisible by train.grad_accum"),
    ("--train.grad_accum_unroll=0", "train.grad_accum_unroll must be positive"),
    ("--model.dtype=float8", "model.dtype"),
    ("--train.warmup_steps=-1", "must not be negative"),
])
def test_validate_rejects_impossible_values(override, pattern):
    with pytest.raises(UserError, match=pattern):
        config_lib.validate(recipe.apply_overrides(Config(), [override]))


def test_dict_round_trip_and_diff():
    cfg = recipe.apply_overrides(Config(), ["--model.n_layer=2", "--train.max_steps=7"])
    assert Config.from_dict(cfg.to_dict()) == cfg
    changes = config_lib.diff(Config(), cfg)
    assert changes == ["model.n_layer: 12 -> 2", "train.max_steps: 2000 -> 7"]
    with pytest.raises(UserError, match="does not match"):
        Config.from_dict({"model": {"n_layers": 2}})


def test_presets():
    assert ModelConfig.preset("gpt2-xl").n_embd == 1600
    assert ModelConfig.preset("gpt2", block_size=256).block_size == 256
    with pytest.raises(UserError, match="gpt2-medium"):
        ModelConfig.preset("gpt3")


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        recipe.load_config_file(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("config = Config(\n")
    with pytest.raises(UserError, match="syntax error on line"):
        recipe.load_config_file(bad)
    bad.write_text("x = 1\n")
    with pytest.raises(UserError, match="must define"):
        recipe.load_config_file(bad)
    bad.write_text("from jaxgpt.config import *\nconfig = Config(model=ModelConfig(n_layers=2))\n")
    with pytest.raises(UserError, match="failed to load: TypeError"):
        recipe.load_config_file(bad)
    assert dataclasses.is_dataclass(Config())
