"""The single-file token cache: a corpus tokenized once into `train.bin`, `val.bin` and `meta.json`.

`prepare(source, tokenizer, cache_dir, val_fraction)` reads a corpus (text.py), splits every document at
its tail, tokenizes both splits and writes them into a folder named by a fingerprint of the source, the
tokenizer and the split, so the same corpus is never tokenized twice; `load_prepared` reads one back as
memory maps. Corpora too large for one process go through shards.py instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxgpt.data.shakespeare import corpus_version
from jaxgpt.data.text import SHAKESPEARE, load_documents, split_documents
from jaxgpt.errors import UserError
from jaxgpt.files import write_atomic
from jaxgpt.tokenizer.base import token_dtype
from jaxgpt.tokenizer.kinds import KINDS, get_tokenizer, tokenizer_from_meta

_META_FORMAT = 1
_SPLIT_METHOD = "tail-of-each-document"  # part of the fingerprint: a new split method re-prepares


@dataclass(frozen=True)
class Prepared:
    """A tokenized corpus on disk: `folder` holds train.bin, val.bin and meta.json."""

    folder: Path
    tokenizer_meta: dict
    dtype: str
    train_tokens: int
    val_tokens: int
    fingerprint: str
    source: str

    def split(self, name: str) -> np.memmap:
        """Args: name, "train" or "val". Returns: that split as a read-only memmap (nothing is loaded)."""
        if name not in ("train", "val"):
            raise UserError(f"unknown split {name!r}; use 'train' or 'val'")
        count = self.train_tokens if name == "train" else self.val_tokens
        return np.memmap(self.folder / f"{name}.bin", dtype=self.dtype, mode="r", shape=(count,))

    # cached_property stores into __dict__ directly, so it works on a frozen dataclass: one map per split.
    @functools.cached_property
    def train(self) -> np.memmap:
        """The training tokens (read-only memmap, opened on first use)."""
        return self.split("train")

    @functools.cached_property
    def val(self) -> np.memmap:
        """The validation tokens (read-only memmap, opened on first use)."""
        return self.split("val")

    def tokenizer(self):
        """Returns: the tokenizer that produced these tokens, rebuilt from its meta."""
        return tokenizer_from_meta(self.tokenizer_meta)


def load_prepared(folder: str | os.PathLike) -> Prepared:
    """Args: folder written by `prepare`. Returns: its `Prepared`, after checking the files are complete."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        p = Prepared(folder, meta["tokenizer"], meta["dtype"], int(meta["train_tokens"]),
                     int(meta["val_tokens"]), meta["fingerprint"], meta["source"])
    except FileNotFoundError:
        raise UserError(f"{folder} has no meta.json; run prepare() on the corpus first") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{folder / 'meta.json'} is unreadable or incomplete; "
                        f"delete {folder} and prepare again") from None
    for name, count in (("train", p.train_tokens), ("val", p.val_tokens)):
        path = folder / f"{name}.bin"
        if not path.is_file() or path.stat().st_size != count * np.dtype(p.dtype).itemsize:
            raise UserError(f"{path} is missing or has the wrong size; delete {folder} and prepare again")
    return p


def prepare(source: str, tokenizer_kind: str, cache_dir: str, val_fraction: float = 0.1) -> Prepared:
    """Tokenizes a corpus once into `cache_dir/<kind>-<fingerprint>/` and reuses it on later calls.

    Args: source (see `load_documents`), tokenizer_kind ("gpt2" | "char" | "simple", or the folder of a
        trained BPE), cache_dir, and val_fraction, the share of every document (its end) kept for validation.
    Returns: the `Prepared` folder (see `split_documents` for the split).
    """
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}; try 0.1")
    # The embedded corpus is keyed on what produces it (the package and cleaner versions), so a cache hit
    # needs no cleaning; a user's text is keyed on its content.
    docs = None if source == SHAKESPEARE and tokenizer_kind in KINDS else load_documents(source)
    name, which, tokenizer = tokenizer_kind, tokenizer_kind, None
    if tokenizer_kind not in KINDS:  # a trained BPE or a Hugging Face tokenizer: keyed by its content, not its place
        tokenizer = get_tokenizer(tokenizer_kind, "\n\n".join(docs))
        if getattr(tokenizer, "fingerprint", None):
            name, which = tokenizer.name, f"{tokenizer.name}:{tokenizer.fingerprint}"
    content = [f"embedded {SHAKESPEARE}: {corpus_version()}"] if docs is None else docs
    parts = (_SPLIT_METHOD, *content, which, repr(float(val_fraction)))
    key = b"\0".join(part.encode("utf-8") for part in parts)  # NUL-separated so fields cannot run together
    fingerprint = hashlib.sha256(key).hexdigest()
    folder = Path(cache_dir).expanduser() / f"{name}-{fingerprint[:16]}"
    try:
        cached = load_prepared(folder)
        if cached.fingerprint == fingerprint:
            return cached
    except UserError:
        pass  # missing or incomplete (e.g. an interrupted run): rebuild it below
    docs = docs if docs is not None else load_documents(source)
    text = "\n\n".join(docs)

    tokenizer = tokenizer or get_tokenizer(tokenizer_kind, text)
    dtype = token_dtype(tokenizer.vocab_size)
    train_text, val_text = split_documents(docs, val_fraction)
    train_ids = np.asarray(tokenizer.encode(train_text), dtype=np.int64)
    val_ids = np.asarray(tokenizer.encode(val_text), dtype=np.int64)
    ids = np.concatenate([train_ids, val_ids])
    assert ids.size == 0 or 0 <= ids.min() <= ids.max() < tokenizer.vocab_size, "token id outside vocabulary"
    n_train = len(train_ids)
    if n_train == 0 or n_train == len(ids):
        raise UserError(f"the corpus has only {len(ids)} tokens, too few to split with val_fraction "
                        f"{val_fraction}; use a bigger corpus")
    if tokenizer.vocab_size < 2:
        # A vocabulary of one (a character corpus such as "aaaa"): every target is that token, the loss is 0
        # from the first step and the gradients are 0, so a run would learn nothing.
        raise UserError(f"the corpus has only one distinct character ({tokenizer.decode([0])!r}), so there is "
                        "nothing to predict; use a text with more than one kind of character")
    description = SHAKESPEARE if source == SHAKESPEARE else str(Path(source).expanduser().resolve())
    meta = {"format": _META_FORMAT, "fingerprint": fingerprint, "source": description,
            "tokenizer": tokenizer.meta(), "dtype": dtype.name, "val_fraction": float(val_fraction),
            "corpus_chars": len(text), "train_tokens": n_train, "val_tokens": len(ids) - n_train}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)  # a stale one must not vouch for half-written bins
        write_atomic(folder / "train.bin", ids[:n_train].astype(dtype).tobytes())
        write_atomic(folder / "val.bin", ids[n_train:].astype(dtype).tobytes())
        # meta.json goes last: its presence is what marks the folder complete.
        write_atomic(folder / "meta.json", json.dumps(meta, indent=1).encode("utf-8"))
    except OSError as e:  # e.g. data.cache_dir is a file, or read-only
        raise UserError(f"cannot create the data cache {folder} ({e.strerror or e}); set the cache folder "
                        "(data.cache_dir, or --cache-dir for prepare) to a writable folder") from None
    return load_prepared(folder)
