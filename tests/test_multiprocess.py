"""Two train.py processes on localhost joined by jax.distributed (CPU collectives) form one run; a single
process resumes it. Also the one-line errors of a coordinator that cannot be reached and of half-given
process settings."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    """The environment without the suite's JAX settings (each process finds its own), but on the CPU alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    return {**env, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_two_processes_train_one_run_and_one_process_resumes_it(corpus, tmp_path):
    common = ["train.py", "--config", "configs/tiny.py", f"--data.source={corpus}",
              f"--data.cache_dir={tmp_path / 'data'}", "--train.log_interval=1", "--train.eval_interval=3",
              "--train.eval_steps=1", "--train.sample_tokens=8", "--train.progress=false"]
    run, ref = tmp_path / "run", tmp_path / "ref"
    address, first = f"127.0.0.1:{_free_port()}", [f"--train.out_dir={run}", "--train.max_steps=3"]
    # Process 0 is set up by flags, process 1 by the environment variables.
    flags = [f"--dist.coordinator={address}", "--dist.num_processes=2", "--dist.process_id=0"]
    env1 = {**_env(), "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    procs = [subprocess.Popen([sys.executable, *common, *first, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for extra, env in (([], env1), (flags, _env()))]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
    (out1, _), (out0, _) = outs
    assert "in 2 processes" in out0 and "step 3: train loss" in out0
    assert "step" not in out1 and "loss" not in out1  # only process 0 reports
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3"]
    assert len(_losses(run)) == 3  # one metrics file, written once

    for out_dir in (run, ref):  # resume the two-process run alone; and an uninterrupted single process
        res = subprocess.run([sys.executable, *common, f"--train.out_dir={out_dir}", "--train.max_steps=6"],
                             cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        assert ("resuming from" in res.stdout) == (out_dir == run)
    got, want = _losses(run), _losses(ref)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [want[s] for s in range(1, 7)], atol=1e-5, rtol=0)


def _train_error(args, tmp_path):
    res = subprocess.run([sys.executable, "train.py", "--config", "configs/tiny.py",
                          f"--train.out_dir={tmp_path / 'run'}", *args], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_unreachable_coordinator_is_one_line(tmp_path):
    line = _train_error([f"--dist.coordinator=127.0.0.1:{_free_port()}", "--dist.num_processes=2",
                         "--dist.process_id=1", "--dist.timeout_s=2"], tmp_path)
    assert "cannot reach the coordinator" in line and "within 2 s" in line


def test_half_given_process_settings_are_one_line(tmp_path):
    line = _train_error(["--dist.num_processes=2"], tmp_path)
    assert "needs dist.coordinator" in line
    line = _train_error(["--dist.coordinator=localhost:x", "--dist.num_processes=2", "--dist.process_id=0"],
                        tmp_path)
    assert "must be host:port" in line
    line = _train_error(["--dist.coordinator=localhost:1234", "--dist.num_processes=2", "--dist.process_id=2"],
                        tmp_path)
    assert "must be below dist.num_processes" in line
