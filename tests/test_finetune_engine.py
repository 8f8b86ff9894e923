"""Finetunes on the training engine: a killed `jaxgpt finetune instruct` resumes exactly, SIGTERM saves and
exits 0, gradient accumulation, warmup and clipping are real settings, and instruct uses the fused loss."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import save_bpe_model, sigkill_at

from jaxgpt.store import checkpoint
from jaxgpt.model import losses as loss
from jaxgpt.finetune import instruct

ROOT = Path(__file__).resolve().parent.parent
COMPARED = ("loss", "grad_norm", "lr", "val_loss")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny GPT-2-BPE base model and 120 Alpaca examples."""
    root = tmp_path_factory.mktemp("ft")
    save_bpe_model(root / "base")
    words = "cat dog sun sea red sky big owl".split()
    data = [{"instruction": "Repeat the word.", "input": w, "output": f"{w} {w}"} for w in words * 15]
    (root / "data.json").write_text(json.dumps(data))
    return root


def _args(setup, out, *extra):
    return [sys.executable, "-m", "jaxgpt", "finetune", "instruct", "--init-from", str(setup / "base"),
            "--data", str(setup / "data.json"), "--out-dir", str(out), "--epochs", "4", "--batch-size", "8",
            "--learning-rate", "3e-3", "--dropout", "0.1", "--log-interval", "1", "--eval-interval", "4",
            "--max-new-tokens", "2", "--no-progress", *extra]


def _records(out):
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("step", *COMPARED) if k in r} for r in map(json.loads, lines)]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def uninterrupted(setup):
    out = setup / "full"
    res = subprocess.run(_args(setup, out), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


def test_sigkill_at_a_random_moment_then_resume_equals_the_uninterrupted_finetune(setup, uninterrupted, tmp_path):
    total = json.loads((uninterrupted / "config.json").read_text())["train"]["max_steps"]
    assert total == 4 * 12  # 102 training examples, batches of 8
    killed = tmp_path / "killed"
    target = random.Random().randint(5, total - 2)  # any step after the first checkpoint (step 4)
    code = sigkill_at(_args(setup, killed), killed, target, ROOT, ENV)
    assert code == -signal.SIGKILL, f"the finetune ended before step {target}"
    res = subprocess.run(_args(setup, killed), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stdout, res.stdout
    # Same batches, dropout keys and optimizer state: every logged number equal, bit for bit.
    assert _records(killed) == _records(uninterrupted), f"killed at step ~{target}"
    done = json.loads((killed / "results.json").read_text())
    assert done["test"] == json.loads((uninterrupted / "results.json").read_text())["test"]


def test_sigterm_saves_a_checkpoint_and_exits_zero(setup, tmp_path):
    out = tmp_path / "term"
    proc = subprocess.Popen(_args(setup, out), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "4").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stdout and not (out / "results.json").exists()
    saved = max(checkpoint.checkpoint_steps(out))
    assert saved >= 4 and _records(out)[-1]["step"] == saved  # the step it stopped at is the one saved


def _finetune(setup, out, **settings):
    cfg = instruct.InstructConfig.of(init_from=str(setup / "base"), data=str(setup / "data.json"), out_dir=str(out),
                                  epochs=1, batch_size=8, learning_rate=3e-3, log_interval=1, max_new_tokens=2,
                                  progress=False, **settings)
    instruct.finetune(cfg)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_grad_accum_warmup_and_clipping_are_real_settings(setup, tmp_path):
    settings = dict(warmup_steps=4, grad_clip=0.5)
    one = _finetune(setup, tmp_path / "one", **settings)
    accum = _finetune(setup, tmp_path / "accum", grad_accum=2, **settings)
    losses = lambda rs: [r["loss"] for r in rs if "loss" in r]  # noqa: E731
    assert len(losses(one)) == 12
    np.testing.assert_allclose(losses(accum), losses(one), atol=1e-5)  # two micro-batches = one batch
    lrs = [r["lr"] for r in one if "lr" in r]
    np.testing.assert_allclose(lrs[:6], [0, 7.5e-4, 1.5e-3, 2.25e-3, 3e-3, 3e-3], rtol=1e-6)  # linear warmup
    saved = json.loads((tmp_path / "accum" / "config.json").read_text())["train"]
    assert (saved["grad_accum"], saved["warmup_steps"], saved["grad_clip"]) == (2, 4, 0.5)


def test_instruct_trains_with_the_fused_head_loss(setup, tmp_path, monkeypatch):
    calls = []
    original = loss.head_loss

    def counting(*args):
        calls.append(args[0].shape)  # (B*T, C): the hidden states, never (B, T, vocab) logits
        return original(*args)

    monkeypatch.setattr(loss, "head_loss", counting)
    _finetune(setup, tmp_path / "fused")
    assert calls and all(len(shape) == 2 and shape[1] == 32 for shape in calls)
