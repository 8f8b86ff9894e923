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
