"""Every Python block of the README and docs/library.md runs as written."""

import os
import re
from pathlib import Path

import jax
import pytest

from jaxgpt import Config, ModelConfig, init_params
from jaxgpt.data.shakespeare import shakespeare_text
from jaxgpt.store import checkpoint
from jaxgpt.tokenizer.kinds import CharTokenizer

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
BLOCKS = [(name, i, code) for name in ("README.md", "docs/library.md")
          for i, code in enumerate(BLOCK.findall((ROOT / name).read_text()))]


def test_the_pages_have_python_blocks():
    assert {name for name, _, _ in BLOCKS} == {"README.md", "docs/library.md"} and len(BLOCKS) >= 4


@pytest.mark.parametrize("name,index,code", BLOCKS, ids=[f"{n}-{i}" for n, i, _ in BLOCKS])
def test_a_python_block_runs(name, index, code, tmp_path, monkeypatch):
    if "out/shakespeare_char" in code:  # what `python train.py` leaves behind, small
        tok = CharTokenizer.from_text(shakespeare_text())
        cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32)
        checkpoint.save_model(tmp_path / "out" / "shakespeare_char", Config(model=cfg),
                              init_params(cfg, jax.random.key(0)), tok.meta(), {})
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{name} block {index}", "exec"), {"__name__": "__doc_block__"})
    assert os.getcwd() == str(tmp_path)
