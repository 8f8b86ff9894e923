"""Mistakes a user can make end in one line on stderr, exit status 2, and nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxgpt.cli.main import main, main_train


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _assert_one_line_error(code, capsys, pattern):
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert pattern in err, err


def _train_args(tmp_path, source, *extra):
    return ["--config", "configs/tiny.py", f"--data.source={source}", f"--train.out_dir={tmp_path / 'run'}",
            f"--data.cache_dir={tmp_path / 'data'}", "--train.progress=false", *extra]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "binary.txt").write_bytes(b"abc\0def" * 10)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    (tmp_path / "short.txt").write_text("to be or not to be\n" * 5)
    (tmp_path / "nofolder").mkdir()
    return tmp_path


@pytest.mark.parametrize("source,extra,pattern", [
    ("missing.txt", [], "does not exist"),
    ("empty.txt", [], "is empty"),
    ("binary.txt", [], "looks binary"),
    ("latin1.txt", [], "is not UTF-8"),
    ("nofolder", [], "no .txt files"),
    ("short.txt", ["--model.block_size=64"], "needs 65"),
    ("short.txt", ["--model.n_layers=2"], "valid keys: model.vocab_size"),
    ("short.txt", ["--train.max_steps=ten"], "not a valid int"),
    ("short.txt", ["--model.n_embd=0"], "model.n_embd must be positive"),
    ("short.txt", ["--model.n_head=3"], "divisible by model.n_head"),
    ("short.txt", ["--train.learning_rate=0"], "learning_rate must be positive"),
    ("short.txt", ["stray"], "cannot read argument"),
])
def test_train_bad_input(files, monkeypatch, capsys, source, extra, pattern):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parent.parent)
    before = _snapshot(files)
    code = main_train(_train_args(files, files / source, *extra))
    _assert_one_line_error(code, capsys, pattern)
    assert not (files / "run").exists()
    assert {p: b for p, b in _snapshot(files).items() if "data" not in p.parts} == before


def test_missing_config_file(tmp_path, capsys):
    _assert_one_line_error(main_train(["--config", str(tmp_path / "x.py")]), capsys, "does not exist")


@pytest.mark.parametrize("args,pattern", [
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-k", "0"], "top_k must be at least 1"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--num-tokens", "0"], "at least 1"),
    ([], "is neither a Hugging Face GPT-2 directory"),
])
def test_sample_bad_input(tmp_path, capsys, args, pattern):
    _assert_one_line_error(main(["sample", str(tmp_path), *args]), capsys, pattern)


def test_sample_missing_directory(tmp_path, capsys):
    _assert_one_line_error(main(["sample", str(tmp_path / "nope")]), capsys, "does not exist")


@pytest.mark.parametrize("script, extra", [("vs_nanogpt.py", ["--train.grad_accum=0"]), ("vs_nanogpt.py", []),
                                           ("suite.py", [])])
def test_benchmarks_refuse_bad_input_in_one_line(tmp_path, script, extra):
    # Refused before any work, so this runs in seconds (the scripts' end-to-end runs are in test_benchmarks.py).
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "earlier.json"
    out.write_text("{}\n")
    res = subprocess.run([sys.executable, f"benchmarks/{script}", "--json", str(out), *extra], cwd=root,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert ("grad_accum must be positive" if extra else "already exists") in res.stderr.strip().splitlines()[-1]
    assert out.read_text() == "{}\n"  # the earlier results are kept
