"""Crashes, preemption and bad numbers: a killed run resumes exactly, unfinished checkpoints are set aside,
non-finite updates stop the run (or are skipped on request), and a full disk is caught before training."""

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from conftest import last_logged_step, sigkill_at

from jaxgpt.store import checkpoint, rundir
from jaxgpt.model import objectives
from jaxgpt.train import steps
from jaxgpt.errors import UserError
from jaxgpt.train.pretrain import train

ROOT = Path(__file__).resolve().parent.parent
COMPARED = ("loss", "grad_norm", "train_loss", "val_loss")


def _records(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("step", *COMPARED) if k in r} for r in map(json.loads, lines)]


def _command(run_dir, tiny_config, tmp_path, steps_=200):
    return [sys.executable, "train.py", "--config", "configs/tiny.py", f"--train.out_dir={run_dir}",
            f"--data.source={tiny_config.data.source}", f"--data.cache_dir={tmp_path / 'data'}",
            f"--train.max_steps={steps_}", "--train.log_interval=1", "--train.eval_interval=5",
            "--train.sample_tokens=1", "--train.progress=false", "--model.dropout=0.1"]


def test_sigkill_at_a_random_step_then_resume_equals_the_uninterrupted_run(tiny_config, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = tmp_path / "full"
    res = subprocess.run(_command(full, tiny_config, tmp_path), cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr

    killed = tmp_path / "killed"
    target = random.Random().randint(6, 150)  # any step after the first checkpoint (step 5)
    code = sigkill_at(_command(killed, tiny_config, tmp_path), killed, target, ROOT, env, timeout=120)
    assert code == -signal.SIGKILL, f"the run ended before step {target}"
    assert last_logged_step(killed) < 200

    res = subprocess.run(_command(killed, tiny_config, tmp_path), cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stdout, res.stdout
    # Same data order, dropout keys and optimizer state: every logged number equal, bit for bit.
    assert _records(killed) == _records(full), f"killed at step ~{target}"


def test_an_unfinished_checkpoint_is_set_aside_and_the_last_complete_one_used(tiny_config, capsys):
    cfg = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, max_steps=10))
    train(cfg)
    run = Path(cfg.train.out_dir)
    # What a process killed while Orbax writes step 20 leaves behind: a temporary folder, half full.
    partial = run / "checkpoints" / "20.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(run / "checkpoints" / "10", partial)
    for f in sorted(p for p in partial.rglob("*") if p.is_file())[::2]:
        f.unlink()
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=20)))
    out = capsys.readouterr().out
    assert "moved an unfinished checkpoint" in out and "resuming from" in out and "(step 10)" in out
    assert (run / rundir.PARTIAL_DIR / partial.name).is_dir() and not partial.exists()
    assert checkpoint.Checkpointer(run, 2).latest_step() == 20


def test_a_non_finite_update_is_not_applied_and_is_counted(tiny_config):
    import functools

    import jax

    from jaxgpt.model.gpt import GPT, init_params
    from jaxgpt.train.optim import make_optimizer

    tx = make_optimizer(tiny_config.train)
    params = init_params(tiny_config.model, jax.random.key(0))
    params["ln_f"]["scale"] = params["ln_f"]["scale"].at[0].set(jnp.nan)
    state = steps.TrainState.create(params, tx)
    step = jax.jit(functools.partial(steps.train_step, loss_fn=objectives.language_model(GPT(tiny_config.model)), tx=tx))
    x = jnp.ones((1, 2, 8), jnp.int32)
    new, m = step(state, (x, x), {})
    assert int(new.step) == 1 and int(new.skipped) == 1 and int(new.first_skipped) == 1
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b, equal_nan=True)), (new.params, new.opt_state),
                        (state.params, state.opt_state))
    assert all(jax.tree.leaves(same))


def _nan_on_some_batches(monkeypatch):
    """Make the training loss NaN on about one batch in five (decided by the batch's tokens, so the same
    steps every time); evaluation, which runs without a dropout key, is left alone."""
    original = objectives.language_model

    def language_model(model, lora=None):
        inner = original(model, lora)

        def loss_fn(trainable, frozen, batch, rng):
            total, sums = inner(trainable, frozen, batch, rng)
            bad = jnp.where(jnp.sum(batch[0]) % 5 == 0, jnp.nan, 0.0)
            return (total, sums) if rng is None else (total + bad, {**sums, "loss": sums["loss"] + bad})
        return loss_fn

    monkeypatch.setattr(objectives, "language_model", language_model)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tiny_config, monkeypatch):
    _nan_on_some_batches(monkeypatch)
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, dropout=0.1),
                              train=dataclasses.replace(tiny_config.train, log_interval=1))
    with pytest.raises(UserError, match=r"not finite at step \d+ .*train.skip_nonfinite=true"):
        train(cfg)
    skipping = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, skip_nonfinite=True))
    last = train(skipping)  # the same run resumes, skipping such updates
    records = [json.loads(l) for l in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 20 and max(r.get("skipped", 0) for r in records) > 0
    assert jnp.isfinite(last["val_loss"])


def test_too_little_disk_space_is_refused_before_training(tiny_config, monkeypatch):
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(UserError, match="two checkpoints of this model need about"):
        train(tiny_config)
    assert not (Path(tiny_config.train.out_dir) / "checkpoints").exists()
