"""`jaxgpt prepare SOURCE... --out DIR` on small generated corpora: the shards equal a direct encoding, do
not depend on the workers, survive SIGKILL, split into parts that add up, and train."""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from jaxgpt.data.shards import is_validation, prepare_shards
from jaxgpt.tokenizer.kinds import GPT2Tokenizer, _gpt2_encoding
from jaxgpt.data.dataset import load_shards, window_positions

ROOT = Path(__file__).resolve().parent.parent
EOT = 50256


def _documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while 42 cats sing, é ü 中文 <|endoftext|>".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 120))) + rng.choice(["", "\n", ".\n\n"])
            for _ in range(n)]


def write_corpus(root: Path, n: int = 400, seed: int = 0) -> list[str]:
    """Documents spread over every kind of file; returns them in the order jaxgpt reads them (sorted paths)."""
    docs = _documents(n, seed)
    q = n // 5
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[:q])))
    with gzip.open(root / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs[q:2 * q])
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": d}) + "\n" for d in docs[2 * q:3 * q]).encode()))
    pq.write_table(pa.table({"text": docs[3 * q:4 * q]}), root / "d.parquet", row_group_size=17)
    for i, d in enumerate(docs[4 * q:]):
        (root / "e" / f"{i:04d}.txt").parent.mkdir(exist_ok=True)
        (root / "e" / f"{i:04d}.txt").write_text(d)
    return [d for d in docs if d.strip()]


def _split_tokens(folder: Path, split: str) -> np.ndarray:
    data = load_shards(folder)
    return np.concatenate([np.asarray(s) for s in data.splits[split]]) if data.splits[split] else np.zeros(0)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root / "src")


def _prepare(src, out, tokenizer=None, **kw):
    kw = {"shard_tokens": 3000, "val_fraction": 0.1, "workers": 1, "log": lambda s: None, **kw}
    return prepare_shards([str(src)], out, tokenizer or GPT2Tokenizer().meta(), **kw)


def test_shards_equal_a_direct_tiktoken_encoding_with_separators(corpus_dir, tmp_path):
    src, docs = corpus_dir
    m = _prepare(src / "src", tmp_path / "ds")
    enc = _gpt2_encoding()  # tiktoken's Encoding of GPT-2 (its files checked against tiktoken's hashes)
    want = {"train": [], "val": []}
    for d in docs:
        want["val" if is_validation(d.encode(), 0.1) else "train"] += [EOT, *enc.encode_ordinary(d)]
    for split in ("train", "val"):
        np.testing.assert_array_equal(_split_tokens(tmp_path / "ds", split), want[split])
    assert 0 < m["documents"]["val"] < m["documents"]["train"] and sum(m["documents"][s] for s in ("train", "val")) == len(docs)
    assert m["tokens"] == {s: len(want[s]) for s in want} and m["dtype"] == "uint16"
    train = [sh["tokens"] for sh in m["shards"] if sh["split"] == "train"]
    assert len(train) > 3 and set(train[:-1]) == {3000} and 0 < train[-1] <= 3000  # fixed-size shards
    assert len(m["sources"]) == 4 + 80 and all(s["bytes"] > 0 for s in m["sources"][:4])  # 4 files and 80 .txt
    sizes = {sh["file"]: sh["tokens"] for sh in m["shards"]}
    assert {p.name for p in (tmp_path / "ds").iterdir()} == {"manifest.json", *sizes}  # nothing else is left


def test_one_and_two_workers_write_identical_bytes(corpus_dir, tmp_path):
    src, _ = corpus_dir
    _prepare(src / "src", tmp_path / "one", workers=1, piece_bytes=2000)
    _prepare(src / "src", tmp_path / "two", workers=2, piece_bytes=2000)
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two]
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes(), a.name


def _cli(src, out, *extra):
    return [sys.executable, "-m", "jaxgpt", "prepare", str(src), "--out", str(out), "--shard-tokens", "2000",
            "--val-fraction", "0.1", "--workers", "1", "--piece-bytes", "3000", *extra]


def test_sigkill_during_prepare_then_the_same_command_ends_with_the_same_bytes(tmp_path):
    docs = write_corpus(tmp_path / "src", n=3000, seed=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = tmp_path / "full"
    assert subprocess.run(_cli(tmp_path / "src", full), cwd=ROOT, env=env, capture_output=True).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(tmp_path / "src", killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, target = time.time() + 120, random.Random().randint(2, 12)
    while time.time() < deadline and proc.poll() is None:
        shards = len(list(killed.glob("train-*.bin"))) if killed.is_dir() else 0
        if shards >= target:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the preparation ended before it could be killed"
    assert not (killed / "manifest.json").exists()  # nothing vouches for an unfinished dataset
    res = subprocess.run(_cli(tmp_path / "src", killed), cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a, b = sorted(full.iterdir()), sorted(killed.iterdir())
    assert [p.name for p in a] == [p.name for p in b] and len(a) > 10
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes(), x.name
    assert len(docs) == sum(json.loads((full / "manifest.json").read_text())["documents"][s] for s in ("train", "val"))


def _documents_of(tokens: np.ndarray) -> Counter:
    """The multiset of documents (runs of tokens after each end-of-text)."""
    cuts = np.flatnonzero(tokens == EOT)
    return Counter(tuple(tokens[a + 1:b]) for a, b in zip(cuts, [*cuts[1:], len(tokens)]))


def test_two_parts_add_up_to_the_one_machine_dataset(corpus_dir, tmp_path):
    from jaxgpt.cli.main import main

    src, _ = corpus_dir
    _prepare(src / "src", tmp_path / "whole")
    for i in (1, 2):
        _prepare(src / "src", tmp_path / "parts", part=(i, 2))
    names = {p.name for p in (tmp_path / "parts").iterdir()}
    assert {"manifest-p1of2.json", "manifest-p2of2.json"} <= names and "manifest.json" not in names
    merged = load_shards(tmp_path / "parts")  # read at training time, before any merge
    assert main(["prepare", "--merge", "--out", str(tmp_path / "parts")]) == 0
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    after = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert after["documents"] == whole["documents"] and after["tokens"] == whole["tokens"] and after["parts"] == 2
    for split in ("train", "val"):
        assert _documents_of(_split_tokens(tmp_path / "parts", split)) == \
            _documents_of(_split_tokens(tmp_path / "whole", split))
        assert sum(len(s) for s in merged.splits[split]) == whole["tokens"][split]


def test_windows_come_from_every_shard_in_proportion_and_never_cross_one():
    sizes = [1000, 3000, 10, 2000]  # the third cannot hold a window of 17 tokens
    counts = np.zeros(4)
    for step in range(200):
        shard, start = window_positions(sizes, 64, 16, seed=3, step=step)
        assert np.all(start + 17 <= np.array(sizes)[shard]) and np.all(start >= 0)
        np.add.at(counts, shard, 1)
    assert counts[2] == 0 and all(counts[[0, 1, 3]] > 0)
    np.testing.assert_allclose(counts[[0, 1, 3]] / counts.sum(), np.array([984, 2984, 1984]) / 5952, atol=0.02)
    again = window_positions(sizes, 64, 16, seed=3, step=7)
    assert all(np.array_equal(a, b) for a, b in zip(again, window_positions(sizes, 64, 16, seed=3, step=7)))


def test_training_on_a_prepared_folder_resumes_exactly(corpus_dir, tmp_path, tiny_config):
    import dataclasses

    from jaxgpt.train.pretrain import train

    from jaxgpt.data.shards import vocabulary_tokenizer

    src, _ = corpus_dir
    chars = vocabulary_tokenizer("char", [str(src / "src")], workers=1)  # a small vocabulary: a quick model
    _prepare(src / "src", tmp_path / "ds", shard_tokens=5000, tokenizer=chars.meta())
    cfg = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, source=str(tmp_path / "ds"),
                                                                     tokenizer="char"))

    def losses(run, **kw):
        train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(tmp_path / run), **kw)))
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, lines)]

    straight = losses("straight")
    losses("split", max_steps=10)
    assert losses("split") == straight


def test_skip_bad_counts_bad_lines_and_overwrite_replaces_only_this_dataset(tmp_path):
    from jaxgpt.cli.main import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "d.jsonl").write_text('{"text": "one good line"}\n{"text": \n{"body": "no text"}\n{"text": "two"}\n')
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds"), "--workers", "1", "--skip-bad",
                 "--val-fraction", "0"]) == 0
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["documents"] == {"train": 2, "val": 0, "skipped": 2}
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds"), "--workers", "1", "--skip-bad"]) == 2
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds"), "--workers", "1", "--skip-bad",
                 "--val-fraction", "0.5", "--overwrite"]) == 0
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["split"]["val_fraction"] == 0.5
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds"), "--workers", "1", "--skip-bad",
                 "--val-fraction", "0.5"]) == 0  # the same dataset again: nothing to do


def test_a_full_disk_is_one_line_and_the_same_command_continues(corpus_dir, tmp_path, monkeypatch, capsys):
    import builtins
    import errno

    from jaxgpt import files
    from jaxgpt.cli.main import main

    src, _ = corpus_dir
    argv = ["prepare", str(src / "src"), "--out", str(tmp_path / "ds"), "--workers", "1", "--shard-tokens", "2000",
            "--piece-bytes", "2000"]
    real_open, writes = builtins.open, [0]

    def filling_up(path, mode="r", *args, **kw):
        if "w" in mode and str(path).endswith(".tmp"):
            writes[0] += 1
            if writes[0] > 6:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(files, "open", filling_up, raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the disk holding") and "is full" in err and "\n" not in err
    assert not (tmp_path / "ds" / "manifest.json").exists() and not list((tmp_path / "ds").glob(".*.tmp"))
    monkeypatch.undo()
    assert main(argv) == 0  # space freed: it continues from the last saved shard
    _prepare(src / "src", tmp_path / "fresh", shard_tokens=2000, piece_bytes=2000, val_fraction=0.0005)
    for a, b in zip(sorted((tmp_path / "ds").iterdir()), sorted((tmp_path / "fresh").iterdir())):
        assert a.name == b.name and a.read_bytes() == b.read_bytes(), a.name
