"""Property tests (hypothesis) for jaxgpt.tokenizer.kinds over arbitrary Unicode text.

GPT-2: decode(encode(s)) == s, and the ids equal tiktoken's own `get_encoding("gpt2")` (loaded offline,
as in test_tokenizer.py) under the same special-token policy: "<|endoftext|>" in text is the single id 50256.
The character and simple tokenizers' properties are in test_tokenizer_char_properties.py, which reuses the
text strategies defined here.
"""

import hashlib
import shutil

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgpt.tokenizer import kinds as mod
from jaxgpt.tokenizer.base import ENDOFTEXT, UNK
from jaxgpt.tokenizer.kinds import GPT2Tokenizer

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
