"""The default character-level run (configs/shakespeare_char.py) with a modern decoder and optimizer: rotary
positions, RMSNorm, a SwiGLU MLP as wide in weights as GPT-2's (n_inner 344 = 2/3 of 4 x 128, rounded up to
a multiple of 8), QK-norm, no biases, and Muon for the blocks' matrices; the data, schedule and step count
unchanged. benchmarks/modern_recipe.py trains it beside the default and beside the variants it was chosen
from; the measured losses and times are in docs/models.md and benchmarks/RESULTS.md."""

import dataclasses
from pathlib import Path

from jaxgpt.recipe import load_config_file

default = load_config_file(Path(__file__).with_name("shakespeare_char.py"))

config = dataclasses.replace(
    default,
    model=dataclasses.replace(default.model, position="rope", norm="rmsnorm", mlp="swiglu", n_inner=344,
                              qk_norm=True, bias=False, qkv_bias=False),
    train=dataclasses.replace(default.train, optimizer="muon", out_dir="out/shakespeare_char_modern"),
)
