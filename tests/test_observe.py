"""Watching a run and the machine: TensorBoard event files, profiles, the compilation cache, `--help` for
every setting, and `jaxgpt info` with its warning for a GPU that JAX does not see."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxgpt.cli.main import main, main_train
from jaxgpt.train.pretrain import train

ROOT = Path(__file__).resolve().parent.parent


def test_tensorboard_events_hold_what_metrics_jsonl_holds(tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, tensorboard=True,
                                                                     sample_interval=10))
    train(cfg)
    run = Path(cfg.train.out_dir)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "train_loss", "val_perplexity"} <= tags
    for key in ("loss", "lr", "val_loss"):
        want = {r["step"]: r[key] for r in records if key in r}
        got = {e.step: e.value for e in events.Scalars(key)}
        assert got.keys() == want.keys() and all(abs(got[s] - want[s]) <= 1e-6 * max(1, abs(want[s])) for s in want)
    assert any("sample" in t for t in events.Tags()["tensors"])  # the samples, as text
    final = [e.step for t in events.Tags()["tensors"] if "sample" in t for e in events.Tensors(t)]
    assert 20 in final, final  # the final sample, written after the loop, in the same file
    assert len(list((run / "tensorboard").iterdir())) == 1  # a second file's purge marker hid every step


def test_profile_steps_write_a_trace(tiny_config):
    cfg = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, max_steps=6,
                                                                     profile_steps="2:3"))
    train(cfg)
    traces = list((Path(cfg.train.out_dir) / "profile").rglob("*.xplane.pb"))
    assert traces and all(p.stat().st_size > 0 for p in traces)


def test_the_compilation_cache_is_used_on_the_second_run(tiny_config, tmp_path):
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = str(ROOT)

    def run(name):
        cmd = [sys.executable, "train.py", "--config", "configs/tiny.py", f"--train.out_dir={tmp_path / name}",
               f"--data.source={tiny_config.data.source}", f"--data.cache_dir={tmp_path / 'data'}",
               "--train.max_steps=4", f"--train.compile_cache={cache}", "--train.progress=false"]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return sorted(p.name for p in cache.rglob("*") if p.is_file())

    first = run("a")
    assert first, "nothing was cached"
    assert run("b") == first  # the same steps again: every compilation came from the cache


def test_help_lists_every_setting_with_its_description(capsys):
    from jaxgpt.config import Config
    from jaxgpt.finetune.dpo import DPOConfig
    from jaxgpt.cli.help import describe

    with pytest.raises(SystemExit):
        main_train(["--help"])
    out = capsys.readouterr().out
    for name, tp, default, text in describe(Config):
        assert f"--{name}={tp}" in out and text in out, name
    with pytest.raises(SystemExit):
        main(["finetune", "dpo", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(DPOConfig):
        if not dataclasses.is_dataclass(f.type) and f.name not in ("mesh", "dist"):
            assert "--" + f.name.replace("_", "-") in out, f.name
    assert "--mesh.fsdp" in out and "how strongly the policy is held to the reference" in out


def test_info_on_this_machine_and_the_warning_for_an_unseen_gpu(capsys, monkeypatch):
    import jax

    from jaxgpt import runtime

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"backend: {jax.default_backend()}" in out and "jax 0.10" in out and "peak FLOP/s for MFU" in out
    if jax.default_backend() == "cpu":
        monkeypatch.setattr(runtime, "nvidia_present", lambda: True)  # as on a GPU machine with jax's CPU build
        assert main(["info"]) == 0
        out = capsys.readouterr().out
        assert "has an NVIDIA GPU but JAX runs on the CPU" in out and 'pip install -e ".[cuda]"' in out


def test_tensorboard_without_its_extra_is_one_line(tiny_config, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if it were not installed
    code = main_train(["--config", str(ROOT / "configs" / "tiny.py"), f"--data.source={tiny_config.data.source}",
                       f"--train.out_dir={tiny_config.train.out_dir}", "--train.tensorboard=true",
                       f"--data.cache_dir={tiny_config.data.cache_dir}"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: train.tensorboard needs the tensorboardX package")
    assert not Path(tiny_config.train.out_dir).exists()
