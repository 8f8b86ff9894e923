"""Your own byte-level BPE: trained on your corpus, loaded offline, carried by every checkpoint.

Training and encoding use Hugging Face's `tokenizers` library (the `jaxgpt[bpe]` extra): the same kind of
tokenizer as GPT-2's (byte-level, GPT-2's pre-tokenizing regex, no unknown token), with `<|endoftext|>`
as its one special token. `train_bpe` writes `tokenizer.json` (the library's own format) into a folder;
`data.tokenizer=FOLDER` uses it, and its whole JSON travels in a run's `tokenizer.json` (`meta()`) and in
an exported Hugging Face directory, so nothing outside the run is needed to read it back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from jaxgpt.errors import UserError
from jaxgpt.files import write_atomic
from jaxgpt.tokenizer.base import ENDOFTEXT, to_ids

FILE = "tokenizer.json"
EXTRA = "pip install 'jaxgpt[bpe]'"


def tokenizers_module(extra: str = EXTRA):
    """Hugging Face's `tokenizers` package, or one line saying which extra installs it."""
    try:
        import tokenizers
    except ImportError:
        raise UserError(f"this tokenizer needs Hugging Face's tokenizers package: {extra}") from None
    return tokenizers


class BPETokenizer:
    """A byte-level BPE trained by `train_bpe` (any text encodes; <|endoftext|> is one token)."""

    name = "bpe"

    def __init__(self, hf_json: str) -> None:
        try:
            self._tok = tokenizers_module().Tokenizer.from_str(hf_json)
        except Exception as e:  # the library raises its own exception type for malformed JSON
            raise UserError(f"not a tokenizers JSON ({str(e)[:100]}); train the tokenizer again") from None
        self._json = hf_json
        self.vocab_size: int = self._tok.get_vocab_size()
        self.eot_id: int | None = self._tok.token_to_id(ENDOFTEXT)
        self.fingerprint = hashlib.sha256(hf_json.encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        """Args: text, where "<|endoftext|>" becomes the single end-of-text id. Returns: token ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_document(self, text: str) -> list[int]:
        """A corpus document: <|endoftext|>, then its tokens."""
        return [self.eot_id, *self.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(to_ids(ids, self.vocab_size), skip_special_tokens=False)

    def meta(self) -> dict:
        """The whole tokenizer, JSON-serialisable (a run carries it; `tokenizer_from_meta` rebuilds it)."""
        return {"kind": "bpe", "tokenizer": self._json}

    def hf_json(self) -> str:
        return self._json


def load_bpe(folder: str | Path) -> BPETokenizer:
    """The tokenizer `train_bpe` saved in `folder`."""
    path = Path(folder) / FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); train one with `jaxgpt tokenizer train`") from None
    tok = BPETokenizer(text)
    if tok.eot_id is None:
        raise UserError(f"{path} has no {ENDOFTEXT} token; train the tokenizer with `jaxgpt tokenizer train`")
    return tok


def train_bpe(documents: Iterable[str], vocab_size: int, out: str | Path, min_frequency: int = 2,
              overwrite: bool = False) -> BPETokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (256 bytes, <|endoftext|>, merges) on `documents` and
    save it as out/tokenizer.json."""
    if vocab_size < 258:
        raise UserError(f"--vocab-size must be at least 258 (256 bytes, <|endoftext|> and one merge), got {vocab_size}")
    if min_frequency < 1:
        raise UserError(f"--min-frequency must be at least 1, got {min_frequency}")
    out = Path(out)
    if (out / FILE).exists() and not overwrite:
        raise UserError(f"{out / FILE} already exists; choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    tk = tokenizers_module()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[ENDOFTEXT],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    seen = [0]

    def counted():
        for doc in documents:
            seen[0] += 1
            yield doc

    tok.train_from_iterator(counted(), trainer=trainer)
    if seen[0] == 0:
        raise UserError("the corpus has no documents to train a tokenizer on")
    text = tok.to_str()
    write_atomic(out / FILE, text)
    return BPETokenizer(text)


def bytes_per_token(tokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes per token over `texts`: how much text each token carries (higher is more compact)."""
    n_bytes = n_tokens = 0
    for t in texts:
        n_bytes += len(t.encode("utf-8"))
        n_tokens += len(tokenizer.encode(t))
    return n_bytes / max(n_tokens, 1)


def is_bpe_folder(name: str) -> bool:
    return Path(name).is_dir() and (Path(name) / FILE).is_file()

