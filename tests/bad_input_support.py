"""Support for tests/test_bad_inputs.py: the tiny run and model every case starts from, the per-case
environment that builds inputs in tmp_path, the Case record, and fingerprints of a folder's files."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import pytest
from conftest import TINY_MODEL, write_corpus

from jaxgpt.store import checkpoint
from jaxgpt.config import Config, DataConfig, ModelConfig, TrainConfig
from jaxgpt.model.gpt import init_params
from jaxgpt.tokenizer.kinds import GPT2Tokenizer


ROOT = Path(__file__).resolve().parent.parent
TINY_RECIPE = str(ROOT / "configs" / "tiny.py")


# --- what the cases start from (built once, never modified) ------------------------------------------

@dataclasses.dataclass(frozen=True)
class Base:
    root: Path  # everything below lives here, and no case may change any of it
    corpus: Path  # the text the run was trained on
    run: Path  # a char-level run (TINY_MODEL: block_size 16, 2 layers) with one checkpoint, step 10
    cache: Path  # its tokenized data cache
    recipe: Path  # a config file that reproduces the run's settings exactly (for resuming it)
    bpe: Path  # a jaxgpt model directory with GPT-2's vocabulary (1 layer, width 32, context 64)


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Base:
    root = tmp_path_factory.mktemp("base")
    from jaxgpt.train.pretrain import train

    corpus = Path(write_corpus(root / "corpus.txt"))
    cfg = Config(
        model=TINY_MODEL,
        data=DataConfig(source=str(corpus), tokenizer="char", cache_dir=str(root / "data")),
        train=TrainConfig(out_dir=str(root / "run"), batch_size=8, max_steps=10, learning_rate=3e-3,
                          warmup_steps=2, decay_steps=10, log_interval=5, eval_interval=10, eval_steps=1,
                          sample_interval=0, sample_tokens=5, progress=False),
    )
    train(cfg)
    recipe = root / "resume_recipe.py"
    recipe.write_text("import json\nfrom jaxgpt.config import Config\n"
                      f"config = Config.from_dict(json.loads(open({str(root / 'run' / 'config.json')!r}).read()))\n")
    bpe = root / "bpe"
    model = ModelConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=32)
    checkpoint.save_model(bpe, Config(model=model, data=DataConfig(tokenizer="gpt2")),
                          init_params(model, jax.random.key(0)), GPT2Tokenizer().meta(), {})
    return Base(root, corpus, root / "run", root / "data", recipe, bpe)


@dataclasses.dataclass(frozen=True)
class Env:
    """What a case's setup gets: its own tmp_path and the shared, read-only base."""

    tmp: Path
    base: Base

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def train(self, source, *extra: str) -> list[str]:
        """Arguments for a fresh tiny run on `source`, writing only under tmp_path."""
        return ["--config", TINY_RECIPE, f"--data.source={source}", f"--train.out_dir={self.tmp / 'run'}",
                f"--data.cache_dir={self.tmp / 'data'}", "--train.progress=false", *extra]

    def finetune(self, task: str, *extra, model=None, out=None) -> list[str]:
        """Arguments for `jaxgpt finetune TASK` from `model` (default: the GPT-2-vocabulary model) into `out`
        (default: tmp_path/out)."""
        return ["finetune", task, "--init-from", str(model or self.base.bpe), "--out-dir", str(out or self.tmp / "out"),
                *extra]

    def run_copy(self) -> Path:
        """A copy of the trained run (and of its data cache, so resuming it prepares nothing)."""
        shutil.copytree(self.base.run, self.tmp / "run")
        shutil.copytree(self.base.cache, self.tmp / "data")
        return self.tmp / "run"

    def resume(self, *extra: str) -> list[str]:
        """Arguments that continue the copied run with its own settings, plus `extra` changes."""
        return ["--config", str(self.base.recipe), f"--train.out_dir={self.tmp / 'run'}",
                f"--data.cache_dir={self.tmp / 'data'}", *extra]


def _truncate_largest_checkpoint_file(run: Path) -> None:
    """Cut every array data file of the latest checkpoint in half (which file holds the parameters,
    rather than only optimizer state, depends on Orbax's layout)."""
    step = max((p for p in (run / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for path in (p for p in step.rglob("*") if p.is_file() and p.parent.name == "d"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def _dangling_link(env: Env, name: str) -> Path:
    """A symbolic link under tmp_path that points nowhere."""
    link = env.tmp / name
    link.symlink_to(env.tmp / f"{name}-target-that-does-not-exist")
    return link


def _symlink_loop(env: Env) -> Path:
    folder = env.tmp / "loop"
    (folder / "sub").mkdir(parents=True)
    os.symlink(folder, folder / "sub" / "up")  # loop/sub/up -> loop -> sub -> up -> ...
    os.symlink(folder / "sub", folder / "again")
    return folder


# --- the table -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    command: str  # "train" (main_train, as train.py) or "jaxgpt" (main)
    args: Callable[[Env], list[str]]  # builds the inputs under env.tmp and returns the command line
    fragment: str  # part of the one-line message
    new_ok: tuple[str, ...] = ()  # top-level names under tmp_path where new paths may appear
    marks: tuple = ()


def _fingerprint(root: Path) -> dict[str, str]:
    """Every path under root: files by SHA-256, symlinks by target (never followed), folders by name."""
    out = {}
    for folder, dirs, files in os.walk(root):  # followlinks=False: a symlink loop is listed, not entered
        for name in dirs + files:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link -> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "folder"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out




def check_case(case: Case, base: Base, tmp_path: Path, capfd) -> None:
    """Run one case in-process and check what the user sees and that nothing on disk changed."""
    from jaxgpt.cli.main import main, main_train

    env = Env(tmp_path, base)
    argv = case.args(env)
    before, base_before = _fingerprint(tmp_path), _fingerprint(base.root)
    capfd.readouterr()  # only what the command itself prints is judged
    code = (main_train if case.command == "train" else main)(argv)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit status {code}; stderr: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.fragment in lines[0], lines[0]
    after = _fingerprint(tmp_path)
    changed = sorted(p for p, h in before.items() if after.get(p) != h)
    assert not changed, f"changed or removed: {changed}"
    new = sorted(p for p in set(after) - set(before) if p.split("/")[0] not in case.new_ok)
    assert not new, f"new paths: {new}"
    assert _fingerprint(base.root) == base_before, "the shared run or model was changed"
