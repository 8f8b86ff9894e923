"""Corpora, tokenized caches and batches: everything between raw text and model-ready arrays.

This module owns loading corpora (the embedded Shakespeare of `jaxgpt.shakespeare`, a text file or a
folder of .txt files),
`prepare`, which tokenizes a corpus once into a fingerprinted cache folder of `train.bin`/`val.bin`
plus `meta.json`, resumable random batches (`get_batch`), and the book's sliding-window dataset
(`sliding_windows`, `iterate_batches`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxgpt.errors import UserError
from jaxgpt.shakespeare import corpus_version, shakespeare_plays
from jaxgpt.tokenizer import KINDS, get_tokenizer, tokenizer_from_meta

SHAKESPEARE = "shakespeare"
_META_FORMAT = 1
_SPLIT_METHOD = "tail-of-each-document"  # part of the fingerprint: a new split method re-prepares

# --- user corpora -------------------------------------------------------------------------------------

def read_text(path: str | Path) -> str:
    """A user's text file as one string: UTF-8 checked, binary refused, BOM and CRLF normalised."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check that it is a readable file") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise UserError(f"{path} looks binary (NUL byte at offset {nul}); pass plain UTF-8 text files only")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 (bad byte at offset {e.start}); re-save it as UTF-8") from None
    # A BOM or Windows line endings would otherwise become extra characters in a char vocabulary.
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def load_documents(source: str) -> list[str]:
    """Args: source, "shakespeare" (embedded), a UTF-8 text file, or a folder (its *.txt, recursively).

    Returns: the corpus as documents: one per play, per file (sorted by path), or the single file.
    """
    if source == SHAKESPEARE:
        return [play.text for play in shakespeare_plays()]
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.rglob("*.txt") if p.is_file()),
                       key=lambda p: p.relative_to(path).parts)
        if not files:
            raise UserError(f"folder {path} has no .txt files; put the corpus in *.txt files "
                            "or pass a single file")
        docs = [t for t in map(read_text, files) if t.strip()]
    elif path.is_file():
        docs = [read_text(path)]
    else:
        raise UserError(f"corpus {source!r} does not exist; pass a text file, a folder of .txt files "
                        f"or {SHAKESPEARE!r}")
    if not docs or not any(d.strip() for d in docs):
        raise UserError(f"corpus {path} is empty (only whitespace); add text to it or pass another source")
    return docs


def load_corpus(source: str) -> str:
    """Returns: the documents of `source` (see `load_documents`) joined by blank lines."""
    return "\n\n".join(load_documents(source))


def split_documents(docs: list[str], val_fraction: float) -> tuple[str, str]:
    """Hold out the last `val_fraction` of every document, cut at a line break where there is one.

    Holding out the end of each document (rather than the end of the whole corpus) keeps the validation
    text from the same mixture as the training text: with the plays, the corpus' last tenth would be
    tragedies only. Returns: (train text, validation text), documents joined by blank lines.
    """
    train, val = [], []
    for doc in docs:
        cut = int(len(doc) * (1 - val_fraction))
        newline = doc.find("\n", cut)
        cut = newline + 1 if 0 <= newline < len(doc) - 1 else cut
        train.append(doc[:cut])
        val.append(doc[cut:])
    return "\n\n".join(t for t in train if t), "\n\n".join(v for v in val if v)


# --- tokenized cache ----------------------------------------------------------------------------------

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


def _write_atomic(path: Path, data: bytes) -> None:
    # Write-then-rename: a crash leaves a stray temp file, never a truncated file under the real name.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
    if tokenizer_kind not in KINDS:  # a trained BPE: keyed by its content, not by where it lies
        tokenizer = get_tokenizer(tokenizer_kind, "\n\n".join(docs))
        if getattr(tokenizer, "fingerprint", None):
            name, which = "bpe", f"bpe:{tokenizer.fingerprint}"
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
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32)
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
        _write_atomic(folder / "train.bin", ids[:n_train].astype(dtype).tobytes())
        _write_atomic(folder / "val.bin", ids[n_train:].astype(dtype).tobytes())
        # meta.json goes last: its presence is what marks the folder complete.
        _write_atomic(folder / "meta.json", json.dumps(meta, indent=1).encode("utf-8"))
    except OSError as e:  # e.g. data.cache_dir is a file, or read-only
        raise UserError(f"cannot create the data cache {folder} ({e.strerror or e}); set the cache folder "
                        "(data.cache_dir, or --cache-dir for prepare) to a writable folder") from None
    return load_prepared(folder)


# --- batches ------------------------------------------------------------------------------------------

def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")


def window_starts(n_tokens: int, batch_size: int, block_size: int, seed: int, step: int) -> np.ndarray:
    """Where each of the `batch_size` training windows of `step` begins in a split of `n_tokens` tokens.

    The same (seed, step) always gives the same starts, so runs can resume, and they do not depend on how
    many processes read the batch: each process reads only its own rows of the same global batch.
    """
    _check_positive(batch_size=batch_size, block_size=block_size)
    if seed < 0 or step < 0:
        raise UserError(f"seed and step must be non-negative, got seed={seed}, step={step}")
    if n_tokens < block_size + 1:
        raise UserError(f"this split has {n_tokens} tokens but block_size {block_size} needs at least "
                        f"{block_size + 1}; use a smaller block_size, a bigger corpus, "
                        "or a val_fraction that leaves this split more tokens")
    rng = np.random.default_rng((seed, step))
    return rng.integers(0, n_tokens - block_size, size=batch_size)  # last start n-block_size-1 still fits +1


def read_windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> np.ndarray:
    """The windows tokens[s : s + block_size + 1] for every start s: shape starts.shape + (block_size + 1,)."""
    # One fancy-index gather reads only the needed pages of a memmap, instead of a Python loop of slices.
    return np.asarray(tokens[starts[..., None] + np.arange(block_size + 1)], dtype=np.int32)


def get_batch(tokens: np.ndarray, batch_size: int, block_size: int, seed: int,
              step: int) -> tuple[np.ndarray, np.ndarray]:
    """Random training windows; the same (seed, step) always gives the same batch, so runs can resume.

    Args: tokens (1-D array or memmap), batch_size, block_size, seed and step (non-negative ints).
    Returns: (x, y), int32 arrays of shape (batch_size, block_size) with y[:, t] == x[:, t + 1]'s source.
    """
    windows = read_windows(tokens, window_starts(len(tokens), batch_size, block_size, seed, step), block_size)
    return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def sliding_windows(ids, max_length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The book's GPTDatasetV1: one window per i in range(0, len(ids) - max_length, stride).

    Args: ids (sequence or array of token ids), max_length (window length), stride (step between starts).
    Returns: (inputs, targets), int32 arrays of shape (n_windows, max_length); targets are the
        inputs shifted one token to the right.
    """
    _check_positive(max_length=max_length, stride=stride)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) <= max_length:
        got = len(ids) if ids.ndim == 1 else f"shape {ids.shape}"
        raise UserError(f"sliding windows need a 1-D id sequence of more than max_length={max_length} "
                        f"tokens, got {got}; use a longer text or a smaller max_length")
    index = np.arange(0, len(ids) - max_length, stride)[:, None] + np.arange(max_length)
    return ids[index].astype(np.int32), ids[index + 1].astype(np.int32)


def iterate_batches(inputs: np.ndarray, targets: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                    drop_last: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The book's DataLoader over (inputs, targets) rows; pass a different seed per epoch to reshuffle.

    Args: inputs, targets (same number of rows), batch_size, shuffle, seed, and drop_last (skip
        a short last batch).
    Returns: a generator of (inputs[batch], targets[batch]) numpy pairs.
    """
    _check_positive(batch_size=batch_size)
    n = len(inputs)
    if len(targets) != n:
        raise UserError(f"inputs has {n} rows but targets has {len(targets)}; "
                        "pass the pair returned by sliding_windows")
    if drop_last and n < batch_size:
        # Zero batches would otherwise surface much later as an empty loop or a NaN mean loss.
        raise UserError(f"only {n} examples for batch_size {batch_size} with drop_last=True, so no batches; "
                        "use a smaller batch_size, more text, or drop_last=False")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    end = n - n % batch_size if drop_last else n
    for start in range(0, end, batch_size):
        idx = order[start:start + batch_size]
        yield inputs[idx], targets[idx]
