"""Property tests (hypothesis) for the character and the book's simple tokenizer over arbitrary Unicode text.

Char: known text round-trips; otherwise a UserError names the first unknown character (repr and position).
Simple (the book's SimpleTokenizerV2): encode never raises (unknown words -> <|unk|>), decode(encode(s)) is
exactly the canonical spelling of s's words, so canonical texts round-trip (see `_canonical`).
"""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_tokenizer_properties import PROPERTY, any_text, text_piece, wide_char

from jaxgpt.errors import UserError
from jaxgpt.tokenizer.base import ENDOFTEXT, UNK
from jaxgpt.tokenizer.kinds import CharTokenizer, SimpleTokenizer

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

