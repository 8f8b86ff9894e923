"""The jaxgpt-vs-PyTorch benchmark suite runs end to end on tiny shapes (its numbers are not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmark_suite_runs_on_tiny_shapes(tmp_path):
    out = tmp_path / "suite.json"
    res = subprocess.run([sys.executable, "benchmarks/suite.py", "--tiny", "--repeats", "2", "--pause", "0",
                          "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert [row.split()[1] for row in rows][:6] == ["1", "2", "3", "4", "5a", "5b"], res.stdout  # 5c on a GPU
    assert all(row.count("|") == 9 for row in rows), res.stdout
    assert "jaxgpt/torch" in res.stdout and "threads" in res.stdout and "peak" in res.stdout

    data = json.loads(out.read_text())
    env = data["environment"]
    for key in ("date", "jax", "torch", "jax_device", "torch_device", "torch_threads", "xla_threads", "peak_flops",
                "peak_method"):
        assert key in env, key
    cases = data["cases"]
    assert sorted(cases) == ["1", "2", "3", "4", "5"]
    for key in "1234":
        assert "ratio" in cases[key]
        for side in ("jaxgpt", "torch"):
            assert {"median_s", "times_s", "tokens_per_s", "mfu"} <= set(cases[key][side])
            assert len(cases[key][side]["times_s"]) == 2
    for side in ("jaxgpt", "torch"):
        assert {"first_step_s", "second_step_s", "peak_rss_mb", "ru_maxrss_mb"} <= set(cases["5"][side])
    assert {"ratio_first_step", "ratio_rss"} <= set(cases["5"])
