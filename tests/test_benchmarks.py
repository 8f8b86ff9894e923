"""The benchmark scripts run end to end on a tiny config (their numbers are not asserted)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_benchmark_runs_on_the_tiny_config():
    res = subprocess.run([sys.executable, "benchmarks/throughput.py", "--config", "configs/tiny.py",
                          "--repeats", "1", "--new-tokens", "8"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| train step") or line.startswith("| generate")]
    assert len(rows) == 2 and "tokens/s" in res.stdout


def test_parity_benchmark_runs_on_a_tiny_model():
    res = subprocess.run([sys.executable, "benchmarks/parity.py", "--preset", "tiny", "--seq", "8", "--batch", "1"],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    row = res.stdout.splitlines()[-1]
    assert row.startswith("| tiny (random) | 1x8 |") and "identical" in row, res.stdout
