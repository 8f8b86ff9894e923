"""End-to-end runs of the trainer on a generated corpus: outputs, determinism, resumption, refusals."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxgpt.store import checkpoint
from jaxgpt.errors import UserError
from jaxgpt.store.loader import load
from jaxgpt.train.pretrain import Trainer, train

ROOT = Path(__file__).resolve().parent.parent


def _losses(run_dir):
    records = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], k): r[k] for r in records for k in ("loss", "val_loss") if k in r}


def _with(cfg, **train_fields):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_fields))


def _tree_hashes(folder):
    return {p: p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def test_run_writes_every_output(tiny_config):
    last = train(tiny_config)
    run = Path(tiny_config.train.out_dir)
    assert {"config.json", "tokenizer.json", "metrics.jsonl", "loss.png", "samples.txt"} <= {
        p.name for p in run.iterdir()}
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [10, 20]
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["vocab_size"] == len(json.loads((run / "tokenizer.json").read_text())["chars"])
    assert last["val_loss"] < 3.0 and np.isclose(last["val_perplexity"], np.exp(last["val_loss"]))
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tiny_config, tmp_path):
    straight = _with(tiny_config, out_dir=str(tmp_path / "straight"))
    train(straight)
    split = _with(tiny_config, out_dir=str(tmp_path / "split"), max_steps=10)
    train(split)
    train(_with(split, max_steps=20))  # extending the step count resumes from step 10
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "split")
    again = _with(tiny_config, out_dir=str(tmp_path / "again"))
    train(again)  # the same seed gives the same losses
    assert _losses(tmp_path / "again") == _losses(tmp_path / "straight")


def test_changed_settings_are_refused_and_nothing_is_touched(tiny_config):
    train(_with(tiny_config, max_steps=10))
    before = _tree_hashes(tiny_config.train.out_dir)
    changed = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, n_layer=3))
    with pytest.raises(UserError, match=r"model\.n_layer: 2 -> 3"):
        Trainer(changed)
    with pytest.raises(UserError, match=r"train\.learning_rate"):
        Trainer(_with(tiny_config, learning_rate=0.1))
    assert _tree_hashes(tiny_config.train.out_dir) == before


def test_checkpoint_round_trip_and_load(tiny_config):
    trainer = Trainer(_with(tiny_config, max_steps=10))
    trainer.run()
    run_dir = Path(tiny_config.train.out_dir)
    ckpt = checkpoint.Checkpointer(run_dir, keep=2)
    state, meta = ckpt.restore(trainer.engine.abstract_state)
    ckpt.close()
    assert int(state.step) == 10 and meta["tokens"] == 10 * tiny_config.train.batch_size * tiny_config.model.block_size
    model = load(run_dir)
    assert model.step == 10 and model.config == trainer.cfg.model and model.tokenizer_meta["kind"] == "char"
    assert model.kind == "jaxgpt" and model.task == {"task": "pretrain", "settings": {}}
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="no checkpoint at step 3"):
        load(run_dir, step=3)


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, **kw)


def test_train_py_then_sample_command(tiny_config, tmp_path):
    run_dir = tmp_path / "cli_run"
    res = _run(["train.py", "--config", "configs/tiny.py", f"--train.out_dir={run_dir}",
                f"--data.source={tiny_config.data.source}", f"--data.cache_dir={tmp_path / 'data'}",
                "--train.max_steps=10"])
    assert res.returncode == 0, res.stderr
    assert "val loss" in res.stdout and (run_dir / "checkpoints" / "10").is_dir()
    res = _run(["-m", "jaxgpt", "sample", str(run_dir), "--prompt", "ROMEO:", "--num-tokens", "30",
                "--num-samples", "2", "--seed", "1"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("ROMEO:") >= 2 and "--- sample 2" in res.stdout


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_config, tmp_path):
    run_dir = tmp_path / "term"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "train.py", "--config", "configs/tiny.py", f"--train.out_dir={run_dir}",
         f"--data.source={tiny_config.data.source}", f"--data.cache_dir={tmp_path / 'data'}",
         "--train.max_steps=1000000", "--train.eval_interval=50"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "50").is_dir() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by signal" in out
    steps = [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(steps) > 50
