"""Property tests (hypothesis) for jaxgpt.tokenizer.kinds over arbitrary Unicode text.

GPT-2: decode(encode(s)) == s, and the ids equal tiktoken's own `get_encoding("gpt2")` (loaded offline,
as in test_tokenizer.py) under the same special-token policy: "<|endoftext|>" in text is the single id 50256.
Char: known text round-trips; otherwise a UserError names the first unknown character (repr and position).
Simple (the book's SimpleTokenizerV2): encode never raises (unknown words -> <|unk|>), decode(encode(s)) is
exactly the canonical spelling of s's words, so canonical texts round-trip (see `_canonical`).
"""

import hashlib
import re
import shutil

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgpt.tokenizer import kinds as mod
from jaxgpt.errors import UserError
from jaxgpt.tokenizer.base import ENDOFTEXT, UNK
from jaxgpt.tokenizer.kinds import CharTokenizer, GPT2Tokenizer, SimpleTokenizer

# Deterministic, no example database on disk, and quick (the whole file runs in a few seconds).
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)

EOT_ID = 50256

# ---------------------------------------------------------------------------------------------------------
# Text strategies: full Unicode (st.characters() excludes surrogates), plus the hard cases drawn on purpose.

EMOJI = ["🦙", "🔥", "👩‍👩‍👧", "👍🏽", "🇯🇵", "❤️", "🏳️‍🌈", "😀", "🧑🏿‍🚀", "#️⃣"]
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
CONTROLS = ["\x00", "\x07", "\x1b", "\x7f", "\x80", "\x9f", "\u200b", "\u200c", "\u200d", "\u200e", "\u2066",
            "\ufeff", "\ufffd", "\U000e0001"]
SPECIAL_BITS = [ENDOFTEXT, ENDOFTEXT, f" {ENDOFTEXT} ", ENDOFTEXT * 2, "<|", "|>", "endoftext", "<|endoftext",
                "endoftext|>", "<|endoftext|", "|endoftext|>", "< |endoftext|>", "<|ENDOFTEXT|>", UNK]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "’s"]
PUNCT = list(',.:;?_!"()\'') + ["--", "---", "-", "...", "?!", "'\"", "(", ")"]

wide_char = st.one_of(
    st.characters(),                                           # anything but surrogates
    st.characters(min_codepoint=0x10000),                      # astral planes
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji blocks
    st.characters(min_codepoint=0x0300, max_codepoint=0x036F),  # combining diacritics
    st.sampled_from(WHITESPACE),
    st.characters(max_codepoint=0x1F),                         # C0 controls
    st.sampled_from(CONTROLS),
)

text_piece = st.one_of(
    st.text(wide_char, max_size=12),
    st.text(st.characters(max_codepoint=0x7F), max_size=12),  # ASCII (the BPE's most-merged region)
    st.from_regex(r"[A-Za-z]{1,8}", fullmatch=True),
    st.from_regex(r"[0-9]{1,6}", fullmatch=True),
    st.sampled_from(EMOJI),
    st.tuples(st.sampled_from("aeoAEÖnz"),  # a base letter with a stack of combining marks
              st.text(st.characters(min_codepoint=0x0300, max_codepoint=0x036F), min_size=1, max_size=4))
    .map("".join),
    st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=8),  # whitespace runs
    st.text(st.sampled_from(" "), min_size=2, max_size=6),         # runs of plain spaces
    st.sampled_from(CONTROLS),
    st.sampled_from(SPECIAL_BITS),
    st.sampled_from(CONTRACTIONS),
    st.sampled_from(PUNCT),
)

# Arbitrary text: concatenations of the pieces above, so fragments like "<|" + "endoftext|>" can meet.
any_text = st.lists(text_piece, max_size=10).map("".join)


# ---------------------------------------------------------------------------------------------------------
# GPT-2 BPE


@pytest.fixture(scope="module")
def reference_gpt2(tmp_path_factory):
    """tiktoken's own `get_encoding("gpt2")`, fed the packaged files through its cache, so no network.

    Same approach as test_tokenizer.py::test_gpt2_matches_tiktoken_get_encoding: tiktoken looks its files up
    under sha1(url) in TIKTOKEN_CACHE_DIR (and checks their SHA-256 before using them).
    """
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        shutil.copy(mod._gpt2_data_dir() / name, cache / hashlib.sha1((base + name).encode()).hexdigest())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # noqa: BLE001 - a tiktoken whose URLs changed would try the network
            pytest.skip(f"tiktoken.get_encoding('gpt2') unavailable: {type(e).__name__}")


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


@PROPERTY
@given(s=any_text)
def test_gpt2_round_trip_and_matches_tiktoken(gpt2, reference_gpt2, s):
    ids = gpt2.encode(s)
    assert gpt2.decode(ids) == s
    assert all(0 <= i < gpt2.vocab_size for i in ids)
    # jaxgpt's policy: <|endoftext|> (the only special) is allowed, i.e. encoded as the single id 50256.
    assert ids == reference_gpt2.encode(s, allowed_special={ENDOFTEXT})
    assert ids == reference_gpt2.encode(s, allowed_special="all")
    # 50256 comes only from the literal special (the string has no self-overlap, so str.count is exact).
    assert ids.count(EOT_ID) == s.count(ENDOFTEXT)


@PROPERTY
@given(s=any_text.filter(lambda s: ENDOFTEXT not in s))
def test_gpt2_without_special_is_ordinary_bpe(gpt2, reference_gpt2, s):
    # With no "<|endoftext|>" in the text every policy agrees, including tiktoken's defaults.
    assert gpt2.encode(s) == reference_gpt2.encode(s) == reference_gpt2.encode_ordinary(s)


@PROPERTY
@given(a=any_text, b=any_text)
def test_gpt2_endoftext_in_text_is_one_special_token(gpt2, reference_gpt2, a, b):
    s = a + ENDOFTEXT + b
    ids = gpt2.encode(s)
    # The special is a hard boundary: the text on either side is encoded on its own.
    assert ids == gpt2.encode(a) + [EOT_ID] + gpt2.encode(b)
    assert gpt2.decode(ids) == s
    # tiktoken's default policy refuses the special; its "ordinary" encoding spells it out as text instead.
    with pytest.raises(ValueError):
        reference_gpt2.encode(s)
    ordinary = reference_gpt2.encode_ordinary(s)
    assert EOT_ID not in ordinary and ordinary != ids
    assert reference_gpt2.decode(ordinary) == s


def test_gpt2_endoftext_examples(gpt2, reference_gpt2):
    assert gpt2.encode(ENDOFTEXT) == [EOT_ID] == reference_gpt2.encode(ENDOFTEXT, allowed_special={ENDOFTEXT})
    assert reference_gpt2.encode_ordinary(ENDOFTEXT) == [27, 91, 437, 1659, 5239, 91, 29]
    assert gpt2.encode(ENDOFTEXT * 2) == [EOT_ID, EOT_ID]
    assert gpt2.encode(" " + ENDOFTEXT + " ") == [220, EOT_ID, 220]
    assert EOT_ID not in gpt2.encode("<|endoftext|")  # an incomplete special is ordinary text
    assert EOT_ID not in gpt2.encode("<|ENDOFTEXT|>")
    assert gpt2.decode([EOT_ID]) == ENDOFTEXT


@PROPERTY
@given(ids=st.lists(st.integers(0, 50256), max_size=20))
def test_gpt2_decode_any_valid_ids(gpt2, reference_gpt2, ids):
    # Any in-range ids decode (byte-level BPE: invalid UTF-8 becomes U+FFFD), exactly as tiktoken does.
    assert gpt2.decode(ids) == reference_gpt2.decode(ids)


# ---------------------------------------------------------------------------------------------------------
# Character tokenizer


@st.composite
def corpus_and_text(draw):
    """A non-empty training text, and a text made partly of its characters and partly of anything."""
    corpus = draw(st.text(wide_char, min_size=1, max_size=40))
    known = sorted(set(corpus))
    known_char = st.sampled_from(known)
    if draw(st.booleans()):  # half the time only known characters, so the round trip is exercised
        chars = draw(st.lists(known_char, max_size=30))
    else:
        chars = draw(st.lists(st.one_of(known_char, wide_char), max_size=30))
        # Guarantee an unknown character in this branch (wide_char may by chance only draw known ones).
        unknown = draw(wide_char.filter(lambda c: c not in known))
        chars.insert(draw(st.integers(0, len(chars))), unknown)
    return corpus, "".join(chars)


@PROPERTY
@given(case=corpus_and_text())
def test_char_round_trip_or_names_first_unknown(case):
    corpus, s = case
    tok = CharTokenizer.from_text(corpus)
    assert tok.chars == "".join(sorted(set(corpus))) and tok.vocab_size == len(set(corpus))
    unknown = [(i, c) for i, c in enumerate(s) if c not in tok.chars]
    if not unknown:
        ids = tok.encode(s)
        assert ids == [tok.chars.index(c) for c in s]
        assert tok.decode(ids) == s
    else:
        pos, char = unknown[0]
        with pytest.raises(UserError) as err:
            tok.encode(s)
        message = str(err.value)
        assert f"character {char!r} at position {pos} is not in the character vocabulary" in message


@PROPERTY
@given(corpus=st.text(wide_char, min_size=1, max_size=40), data=st.data())
def test_char_decode_encode_is_identity_on_ids(corpus, data):
    tok = CharTokenizer.from_text(corpus)
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=30))
    assert tok.encode(tok.decode(ids)) == ids


# ---------------------------------------------------------------------------------------------------------
# Simple (word-level) tokenizer

# decode() joins tokens with one space and then removes the space before these (jaxgpt's _SIMPLE_JOIN).
JOINED_PUNCT = set(',.:;?!"()\'')


def _canonical(tokens: list[str]) -> str:
    """The text decode() produces for these vocabulary tokens: a single space before every token except
    the first and those in JOINED_PUNCT, which attach to what precedes them (note "_" and "--" do not)."""
    return "".join(t if i == 0 or t in JOINED_PUNCT else " " + t for i, t in enumerate(tokens))


def _is_punct(token: str) -> bool:
    return token in JOINED_PUNCT or token in ("_", "--")


def _book_split(text: str) -> list[str]:
    # The book's preprocessing, verbatim (chapter 2).
    preprocessed = re.split(r'([,.:;?_!"()\']|--|\s)', text)
    return [item.strip() for item in preprocessed if item.strip()]


simple_corpus = st.lists(text_piece, min_size=1, max_size=12).map(lambda parts: " ".join(parts) + " seed")


@PROPERTY
@given(corpus=simple_corpus, s=any_text)
def test_simple_encode_never_raises_unknown_words_are_unk(corpus, s):
    tok = SimpleTokenizer.from_text(corpus)
    unk = tok.vocab.index(UNK)
    ids = tok.encode(s)
    words = _book_split(s)
    assert ids == [tok.vocab.index(w) if w in tok.vocab else unk for w in words]
    # decode(encode(s)) is s's words, unknown ones as <|unk|>, in canonical spelling.
    assert tok.decode(ids) == _canonical([w if w in tok.vocab else UNK for w in words])


@PROPERTY
@given(corpus=simple_corpus, data=st.data())
def test_simple_round_trips_canonical_text_of_known_words(corpus, data):
    tok = SimpleTokenizer.from_text(corpus)
    # Any sequence of vocabulary entries (words, punctuation marks, "--", the specials).
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=25))
    text = _canonical([tok.vocab[i] for i in ids])
    assert tok.encode(text) == ids
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(ids) == text


@PROPERTY
@given(words=st.lists(st.sampled_from(["I", "had", "always", "thought", "Jack", "a", "cheap", "genius", "--",
                                       ",", ".", ";", ":", "?", "!", "(", ")", '"', "'", "_", "s", ENDOFTEXT]),
                      max_size=25),
       seps=st.lists(st.text(st.sampled_from(" \t\n"), max_size=3), min_size=26, max_size=26))
def test_simple_round_trip_ignores_spacing(words, seps):
    # Known words joined by any whitespace (or none, next to punctuation) decode to the canonical spelling.
    tok = SimpleTokenizer.from_text('I had always thought Jack a cheap genius--though; (s): "yes" _ \'s! ?,.')
    assert set(words) <= set(tok.vocab)
    parts = []
    for i, w in enumerate(words):
        sep = seps[i]
        prev = words[i - 1] if i else None
        # Whitespace is needed only between two words (non-punctuation tokens) to keep them apart;
        # a punctuation mark may touch its neighbours.
        if not sep and prev is not None and not (_is_punct(w) or _is_punct(prev)):
            sep = " "
        parts.append(sep + w)
    text = "".join(parts)
    assert _book_split(text) == words
    assert tok.decode(tok.encode(text)) == _canonical(words)

