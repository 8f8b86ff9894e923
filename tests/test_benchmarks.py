"""The benchmark scripts run end to end on a tiny config (their numbers are not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Smoke tests of the benchmark scripts: each runs a script end to end (tens of seconds); `pytest -m slow`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_benchmark_runs_on_the_tiny_config():
    # The GPU recipe's settings (16-bit compute, rematerialisation) on the tiny config; attention is XLA's off a GPU.
    res = subprocess.run([sys.executable, "benchmarks/throughput.py", "--config", "configs/tiny.py",
                          "--repeats", "1", "--new-tokens", "8", "--model.dtype=bfloat16", "--model.remat=dots"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    if "cpu" in res.stdout.splitlines()[0]:
        assert "compute bfloat16, attention xla, remat dots" in res.stdout, res.stdout
    rows = [line for line in res.stdout.splitlines() if line.startswith("| train step") or line.startswith("| generate")]
    assert len(rows) == 2 and "tokens/s" in res.stdout


def test_parity_benchmark_runs_on_a_tiny_model():
    res = subprocess.run([sys.executable, "benchmarks/parity.py", "--preset", "tiny", "--seq", "8", "--batch", "1"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    row = res.stdout.splitlines()[-1]
    assert row.startswith("| tiny (random) | 1x8 |") and "identical" in row, res.stdout


def test_finetune_benchmark_runs_quickly_from_a_tiny_base(tmp_path):
    import jax

    from jaxgpt.store import checkpoint
    from jaxgpt.config import Config, DataConfig, ModelConfig
    from jaxgpt.model.gpt import init_params
    from jaxgpt.tokenizer.kinds import GPT2Tokenizer

    cfg = ModelConfig(vocab_size=50257, block_size=128, n_layer=1, n_head=2, n_embd=32)
    checkpoint.save_model(tmp_path / "base", Config(model=cfg, data=DataConfig(tokenizer="gpt2")),
                          init_params(cfg, jax.random.key(0)), GPT2Tokenizer().meta(), {})
    res = subprocess.run([sys.executable, "benchmarks/finetune.py", "--base", str(tmp_path / "base"), "--quick",
                          "--out", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith(("| classify", "| instruct", "| dpo"))]
    assert len(rows) == 5 and "exact match by kind" in res.stdout, res.stdout


def test_scaling_benchmark_runs_on_fake_devices():
    res = subprocess.run([sys.executable, "benchmarks/scaling.py", "--layers", "1", "--heads", "2", "--width", "32",
                          "--context", "16", "--batch", "8", "--warmup", "1", "--steps", "1"],
                         cwd=ROOT, capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "ms/step" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2", "2", "4", "4", "8", "8"], res.stdout


def test_device_check_runs_on_a_stand_in_model():
    res = subprocess.run([sys.executable, "benchmarks/device_check.py", "--tiny", "--repeats", "1"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    names = [r.split("|")[1].strip() for r in rows]
    assert any(n.startswith("attention xla") for n in names) and any(n.startswith("attention cudnn") for n in names)
    assert [n.split(",")[0] for n in names if n.startswith("remat")] == ["remat none", "remat dots", "remat full"]
    assert sum(n.startswith("cached greedy decoding") for n in names) == 2 and names[-1].startswith("FSDP over")


def test_side_by_side_with_nanogpt_style_torch_runs(tmp_path):
    out = tmp_path / "vs.json"
    res = subprocess.run([sys.executable, "benchmarks/vs_nanogpt.py", "--recipes", "char", "--steps", "1",
                          "--rounds", "2", "--warmup", "1", "--json", str(out), "--model.n_layer=1",
                          "--model.n_embd=32", "--model.n_head=2", "--train.batch_size=4", "--train.grad_accum=2",
                          f"--data.cache_dir={tmp_path / 'data'}"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    case = json.loads(out.read_text())["cases"]["char"]
    # With micro-batches PyTorch also runs the batch whole, and the ratio is against its faster step.
    assert len(case["jaxgpt"]["steps_s"]) == len(case["torch"]["steps_s"]) == len(case["torch_whole"]["steps_s"]) == 2
    best = max(case["torch"]["tokens_per_s"], case["torch_whole"]["tokens_per_s"])
    assert case["best_torch_tokens_per_s"] == best
    assert case["ratio"] == pytest.approx(case["jaxgpt"]["tokens_per_s"] / best)
    assert "| char | 1 layers, 2 heads, width 32" in res.stdout
