"""Corpus-scale data preparation: documents streamed, tokenized on every core, written as token shards.

`prepare_shards(sources, out)` writes into `out`:
- `train-000000.bin`, `val-000000.bin`, ...: raw token ids (uint16 when the vocabulary fits, else uint32),
  `shard_tokens` each (the last of a split is shorter);
- `manifest.json`, last: the tokenizer, the shards with token counts and SHA-256, the sources, document
  and token totals, the split rule. A folder without it is not (yet) a dataset.

Memory stays bounded whatever the corpus size: the workers read pieces of a few MB each (sources.py), a few
pieces in flight, and each split holds one shard's buffer. Results are consumed in input order,
so the bytes do not depend on the number of workers. Whenever a shard completes, the state (the next
piece, the shards written, the buffers of the shards being filled) is saved in `.progress.json` and
`.partial-*.bin`; a killed run started again continues from there and ends with the same bytes.

With `part=(i, n)` a machine prepares every n-th input file from the i-th into the same folder, its files
named `train-p{i}of{n}-*.bin` and `manifest-p{i}of{n}.json`; `dataset.merge_parts` (or `load_shards` at training
time) joins the parts into one dataset: the same documents, so the same token multiset, as one machine's.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import time
from pathlib import Path

import numpy as np

from jaxgpt.data import sources as corpus
from jaxgpt.errors import UserError
from jaxgpt.files import write_atomic
from jaxgpt.tokenizer.base import ENDOFTEXT, UNK, token_dtype
from jaxgpt.tokenizer.kinds import CharTokenizer, SimpleTokenizer, tokenizer_from_meta

FORMAT = "jaxgpt-shards/1"
SPLITS = ("train", "val")
SPLIT_RULE = "a document is validation when blake2b-64 of its UTF-8 bytes, over 2**64, is below val_fraction"


# --- tokenizing, in the worker processes ------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(meta: dict, field: str, skip_bad: bool, val_fraction: float) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker; the workers are the cores
    tok = tokenizer_from_meta(meta)
    _WORKER.update(encode=tok.encode_document, field=field, skip_bad=skip_bad, val_fraction=val_fraction,
                   dtype=token_dtype(tok.vocab_size))


def is_validation(document: bytes, val_fraction: float) -> bool:
    """The split rule (SPLIT_RULE) for a document's UTF-8 bytes: by its content alone, so neither the number
    of workers nor of parts changes it, and duplicated documents land in the same split."""
    digest = hashlib.blake2b(document, digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def _tokenize(piece: corpus.Piece) -> dict:
    """One piece's token ids per split (documents in input order, separators included) and its counts."""
    w = _WORKER
    ids = {s: [] for s in SPLITS}
    docs, skipped, text_bytes = {s: 0 for s in SPLITS}, 0, 0
    for text in corpus.documents(piece, w["field"], w["skip_bad"]):
        if text is None:
            skipped += 1
            continue
        if not text.strip():  # an empty document has nothing to learn
            continue
        raw = text.encode("utf-8")
        split = "val" if is_validation(raw, w["val_fraction"]) else "train"
        ids[split].append(np.asarray(w["encode"](text), w["dtype"]))
        docs[split] += 1
        text_bytes += len(raw)
    arrays = {s: np.concatenate(v) if v else np.zeros(0, w["dtype"]) for s, v in ids.items()}
    return {"index": piece.index, "ids": arrays, "docs": docs, "skipped": skipped, "text_bytes": text_bytes,
            "bytes": piece.bytes}


# --- writing shards ---------------------------------------------------------------------------------------

class _Split:
    """The shards of one split: a buffer of one shard, written out each time it fills."""

    def __init__(self, out: Path, name: str, prefix: str, dtype, shard_tokens: int, saved: dict | None):
        self.out, self.name, self.prefix, self.shard_tokens = out, name, prefix, shard_tokens
        self.buf = np.empty(shard_tokens, dtype)
        self.n, self.shards = 0, []
        if saved:  # resuming: the shards written and the buffer of the one being filled
            self.shards = saved["shards"]
            part = np.fromfile(out / saved["partial"], dtype) if saved.get("partial") else np.zeros(0, dtype)
            self.buf[:len(part)], self.n = part, len(part)

    def add(self, ids: np.ndarray) -> bool:
        """Append token ids; True if a shard was completed (and written)."""
        completed = False
        while len(ids):
            take = min(len(ids), self.shard_tokens - self.n)
            self.buf[self.n:self.n + take] = ids[:take]
            self.n, ids = self.n + take, ids[take:]
            if self.n == self.shard_tokens:
                self._write()
                completed = True
        return completed

    def _write(self) -> None:
        name = f"{self.name}-{self.prefix}{len(self.shards):06d}.bin"
        data = memoryview(self.buf[:self.n])
        write_atomic(self.out / name, data)
        self.shards.append({"file": name, "split": self.name, "tokens": int(self.n),
                            "sha256": hashlib.sha256(data).hexdigest()})
        self.n = 0

    def save_partial(self, generation: int) -> str:
        name = f".partial-{self.name}-{self.prefix}{generation}.bin"
        write_atomic(self.out / name, memoryview(self.buf[:self.n]))
        return name

    def finish(self) -> list[dict]:
        if self.n:
            self._write()
        return self.shards


@dataclasses.dataclass(frozen=True)
class Settings:
    """What makes a dataset: the same settings (and inputs) resume, others are refused."""

    tokenizer: dict
    text_field: str
    val_fraction: float
    shard_tokens: int
    part: tuple[int, int]
    skip_bad: bool
    sources: tuple[tuple[str, int], ...]  # (path, size) of every input file of this part

    def record(self) -> dict:
        d = dataclasses.asdict(self)
        d["part"], d["sources"] = list(self.part), [list(s) for s in self.sources]
        return d


_DATASET_FILE = re.compile(r"^(?:(?:train|val)-(?:(p\d+of\d+)-)?\d{6}\.bin|\.partial-(?:train|val)-(?:(p\d+of\d+)-)?"
                           r"\d+\.bin|manifest(?:-(p\d+of\d+))?\.json|\.progress(?:-(p\d+of\d+))?\.json)$")


def _tag(part: tuple[int, int]) -> str:
    return "" if part == (1, 1) else f"p{part[0]}of{part[1]}"


def _names(part: tuple[int, int]) -> tuple[str, str, str]:
    """(shard name prefix, manifest file, progress file) of a part."""
    tag = _tag(part)
    return (f"{tag}-", f"manifest-{tag}.json", f".progress-{tag}.json") if tag else \
        ("", "manifest.json", ".progress.json")


def dataset_tag(name: str) -> str | None:
    """The part a dataset file belongs to ("" for a one-machine dataset), or None for any other file."""
    name = name[1:].removesuffix(".tmp") if name.endswith(".tmp") else name  # a write cut short
    m = _DATASET_FILE.match(name)
    return None if m is None else next((g for g in m.groups() if g), "")


def _claim(out: Path, settings: Settings, overwrite: bool) -> dict | None:
    """Check the output folder; returns the saved progress to resume, {"done": True} when this dataset is
    already there, or None to start afresh (after --overwrite removed this part's earlier files)."""
    _, manifest, progress = _names(settings.part)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not out.exists():
        return None
    others = sorted(p.name for p in out.iterdir() if dataset_tag(p.name) is None)
    if others:
        raise UserError(f"{out} holds files that are not a jaxgpt dataset ({', '.join(others[:3])}); choose an "
                        "empty or new --out folder")
    for name in (manifest, progress):
        if not (out / name).is_file():
            continue
        try:
            saved = json.loads((out / name).read_text())
        except (OSError, json.JSONDecodeError):
            saved = {}
        if saved.get("settings") == settings.record():
            return {"done": True} if name == manifest else saved
        if not overwrite:
            what = "a prepared dataset" if name == manifest else "an unfinished preparation"
            raise UserError(f"{out} holds {what} with other settings or inputs; pass --overwrite to replace it, "
                            "or choose another --out folder")
    tag = _tag(settings.part)
    for p in out.iterdir():
        if dataset_tag(p.name) == tag:  # this part's own earlier files (all of them with --overwrite; else debris)
            p.unlink()
    return None


def prepare_shards(sources: list[str], out: str | Path, tokenizer: dict, text_field: str = "text",
                   workers: int | None = None, shard_tokens: int = 100_000_000, val_fraction: float = 0.0005,
                   part: tuple[int, int] = (1, 1), overwrite: bool = False, skip_bad: bool = False,
                   piece_bytes: int = 1 << 22, log=print) -> dict:
    """Tokenize `sources` into shards in `out` (see the module docstring); returns the manifest.

    Args: tokenizer, a tokenizer's `meta()`; workers, processes that tokenize (default: every core; 1
        tokenizes in this process); the rest as `jaxgpt prepare --help` says.
    """
    if shard_tokens < 1 or not 0 <= val_fraction < 1 or piece_bytes < 1:
        raise UserError("--shard-tokens must be positive and --val-fraction in [0, 1)")
    i, n = part
    if not 1 <= i <= n:
        raise UserError(f"--part {i}/{n} must be I/N with 1 <= I <= N")
    files = corpus.find_files(sources, part)
    vocab = tokenizer_from_meta(tokenizer).vocab_size
    dtype = token_dtype(vocab)
    settings = Settings(tokenizer, text_field, float(val_fraction), int(shard_tokens), (i, n), bool(skip_bad),
                        tuple((str(p.resolve()), p.stat().st_size) for p in files))
    out = Path(out)
    saved = _claim(out, settings, overwrite)
    prefix, manifest_name, progress_name = _names(part)
    if saved and saved.get("done"):
        log(f"{out} already holds this dataset; nothing to do")
        return json.loads((out / manifest_name).read_text())
    splits = {s: _Split(out, s, prefix, dtype, shard_tokens, (saved or {}).get("splits", {}).get(s)) for s in SPLITS}
    counts = (saved or {}).get("counts") or {"docs": {s: 0 for s in SPLITS}, "tokens": {s: 0 for s in SPLITS},
                                             "skipped": 0, "text_bytes": 0}
    start = (saved or {}).get("next_piece", 0)
    total = corpus.total_bytes(files)
    if start:
        log(f"continuing the preparation in {out} from piece {start} of the input")
    meter = _Meter(total, counts, log)
    generation = [(saved or {}).get("generation", 0)]

    def consume(result: dict) -> None:
        done = False
        for s in SPLITS:
            done |= splits[s].add(result["ids"][s])
            counts["docs"][s] += result["docs"][s]
            counts["tokens"][s] += int(len(result["ids"][s]))
        counts["skipped"] += result["skipped"]
        counts["text_bytes"] += result["text_bytes"]
        meter.update(result["bytes"])
        if done:  # a shard was completed: save where we are
            generation[0] += 1
            state = {"settings": settings.record(), "next_piece": result["index"] + 1, "counts": counts,
                     "generation": generation[0],
                     "splits": {s: {"shards": splits[s].shards, "partial": splits[s].save_partial(generation[0])}
                                for s in SPLITS}}
            write_atomic(out / progress_name, json.dumps(state).encode())
            _remove_old_partials(out, _tag(part), generation[0])

    todo = (p for p in corpus.pieces(files, piece_bytes) if p.index >= start)  # resuming skips without reading
    _run(todo, consume, workers, _init_worker, (tokenizer, text_field, skip_bad, val_fraction), _tokenize)
    if not sum(counts["docs"].values()):
        raise UserError(f"the corpus in {', '.join(map(str, sources))} has no documents (its files are empty"
                        f"{', or every line was skipped as bad' if counts['skipped'] else ''}); check the sources")
    shards = [sh for s in SPLITS for sh in splits[s].finish()]
    manifest = {"format": FORMAT, "settings": settings.record(), "tokenizer": tokenizer, "dtype": np.dtype(dtype).name,
                "shard_tokens": shard_tokens, "split": {"rule": SPLIT_RULE, "val_fraction": val_fraction},
                "separator": separator(tokenizer), "part": [i, n], "parts": 1 if n == 1 else None,
                "sources": [{"path": p, "bytes": b} for p, b in settings.sources],
                "documents": {**counts["docs"], "skipped": counts["skipped"]}, "tokens": counts["tokens"],
                "shards": shards}
    write_atomic(out / manifest_name, (json.dumps(manifest, indent=1) + "\n").encode())
    (out / progress_name).unlink(missing_ok=True)
    _remove_old_partials(out, _tag(part), None)
    meter.done()
    return manifest


def separator(tokenizer: dict) -> str:
    if tokenizer.get("kind") == "char":
        return "each document is followed by a blank line ('\\n\\n'): the character vocabulary has no end-of-text"
    return "<|endoftext|> before every document"


def _remove_old_partials(out: Path, tag: str, keep: int | None) -> None:
    """Delete this part's saved shard buffers but generation `keep` (all of them when None)."""
    for p in out.glob(".partial-*.bin"):
        if dataset_tag(p.name) == tag and (keep is None or p.name != f".partial-{p.name.split('-')[1]}-"
                                           f"{tag + '-' if tag else ''}{keep}.bin"):
            p.unlink(missing_ok=True)


def _run(pieces, consume, workers: int | None, init, init_args: tuple, work) -> None:
    """`consume(work(piece))` for every piece, in order, with `workers` processes (or in this one). The
    workers read their pieces themselves; this process only collects and writes."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        init(*init_args)
        for p in pieces:
            consume(work(p))
        return
    # Spawned, not forked: the parent may hold JAX's threads. Few pieces in flight bound memory (Pool.imap
    # would queue the whole input).
    with multiprocessing.get_context("spawn").Pool(workers, init, init_args) as pool:
        pending = collections.deque()
        for p in pieces:
            pending.append(pool.apply_async(work, (p,)))
            while len(pending) >= workers + 2:
                consume(pending.popleft().get())
        while pending:
            consume(pending.popleft().get())


class _Meter:
    """Progress: documents, bytes read, tokens, tokens/s and an ETA from the input's size."""

    def __init__(self, total: int, counts: dict, log):
        self.total, self.counts, self.log = total, counts, log
        self.t0 = self.last = time.perf_counter()
        self.read, self.tokens0 = 0, sum(counts["tokens"].values())

    def update(self, piece_bytes: int) -> None:
        self.read += piece_bytes
        now = time.perf_counter()
        if now - self.last >= 2:
            self.last = now
            self.log(self.line(now))

    def line(self, now: float) -> str:
        c = self.counts
        rate = (sum(c["tokens"].values()) - self.tokens0) / max(now - self.t0, 1e-9)
        frac = self.read / self.total if self.total else 1.0
        eta = (now - self.t0) / frac * (1 - frac) if frac > 0 else float("nan")
        return (f"{sum(c['docs'].values()):,} documents | {self.read / 1e6:,.0f} of {self.total / 1e6:,.0f} MB | "
                f"{sum(c['tokens'].values()):,} tokens | {rate:,.0f} tokens/s | eta {eta / 60:.1f} min")

    def done(self) -> None:
        self.read = self.total
        self.log(self.line(time.perf_counter()))


# --- char and word vocabularies ---------------------------------------------------------------------------

def _vocabulary_of(piece: corpus.Piece) -> set[str]:
    w = _WORKER
    out: set[str] = set()
    for text in corpus.documents(piece, w["field"], w["skip_bad"]):
        if text is not None:
            out.update(w["split"](text))
    return out


def _init_vocabulary(kind: str, field: str, skip_bad: bool) -> None:
    _WORKER.update(field=field, skip_bad=skip_bad, split=set if kind == "char" else SimpleTokenizer._split)


def vocabulary_tokenizer(kind: str, sources: list[str], text_field: str = "text", skip_bad: bool = False,
                         workers: int | None = None, part: tuple[int, int] = (1, 1)):
    """A char or simple (word) tokenizer whose vocabulary is every character or word of the corpus (one
    streaming pass; a blank line, the char documents' separator, is always in the vocabulary)."""
    found: set[str] = set()
    _run(corpus.pieces(corpus.find_files(sources, part)), found.update, workers, _init_vocabulary,
         (kind, text_field, skip_bad), _vocabulary_of)
    if kind == "char":
        return CharTokenizer("".join(sorted(found | {"\n"})))
    words = sorted(found - {ENDOFTEXT, UNK})
    if not words:
        raise UserError("the corpus has no words to build a vocabulary from")
    return SimpleTokenizer(words + [ENDOFTEXT, UNK])
