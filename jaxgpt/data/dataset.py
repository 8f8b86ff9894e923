"""Token data for pretraining, whatever prepared it, and the random training windows drawn from it.

`open_data(source, tokenizer, cache_dir, val_fraction)` reads `data.source` as
- a folder prepared by `jaxgpt prepare SOURCE... --out DIR` (a `manifest.json`, or the manifests of all
  the parts that `--part I/N` runs wrote): its train and validation shards;
- a cache folder of the single-file `prepare` (`meta.json`, `train.bin`, `val.bin`), as before;
- the embedded corpus, a text file or a folder of .txt files: tokenized once into the cache (cache.prepare).

Every split is a list of read-only memory-mapped shards. A batch is `batch` windows of T + 1 tokens, drawn
uniformly over every window that fits inside one shard (so each shard in proportion to its tokens; a
window never crosses a shard boundary, where one document set ends and the next begins), from a
generator seeded by (seed, step) alone. With one shard this is exactly `windows.window_starts`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxgpt.data import cache, windows
from jaxgpt.errors import UserError
from jaxgpt.files import read_json_object, write_atomic
from jaxgpt.tokenizer.kinds import Tokenizer, get_tokenizer, tokenizer_from_meta


@dataclass(frozen=True)
class TokenData:
    tokenizer_meta: dict
    splits: dict[str, list[np.ndarray]]  # "train", "val" -> memory-mapped shards
    folder: Path
    summary: str = ""
    manifest: dict = field(default_factory=dict)

    def count(self, split: str) -> int:
        return sum(len(s) for s in self.splits[split])

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the data was made with, built once."""
        return tokenizer_from_meta(self.tokenizer_meta)

    @property
    def train(self) -> list[np.ndarray]:
        return self.splits["train"]

    @property
    def val(self) -> list[np.ndarray]:
        return self.splits["val"]


def is_sharded(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("manifest*.json"))


def merged_manifest(folder: Path) -> dict:
    """The dataset in `folder`: manifest.json, or the union of every part's manifest (all parts present,
    prepared alike)."""
    whole = folder / "manifest.json"
    if whole.is_file():
        return _read(whole)
    parts = [_read(p) for p in sorted(folder.glob("manifest-p*of*.json"))]
    return merge_manifests(parts, folder)


def _read(path: Path) -> dict:
    return read_json_object(path, "prepare the data again")


def merge_manifests(parts: list[dict], folder: Path) -> dict:
    """One dataset from the manifests of parts 1..N of `--part I/N` runs (all present, prepared alike)."""
    if not parts:
        raise UserError(f"{folder} holds no manifest.json (nor part manifests); prepare the data with `jaxgpt "
                        "prepare SOURCE... --out DIR` (an unfinished preparation continues when run again)")
    n = parts[0]["part"][1]
    have = sorted(p["part"][0] for p in parts)
    if have != list(range(1, n + 1)) or any(p["part"][1] != n for p in parts):
        missing = sorted(set(range(1, n + 1)) - set(have))
        raise UserError(f"{folder} holds parts {have} of {n}; prepare part(s) {missing} (--part I/{n}) before "
                        "training or merging")
    first = parts[0]
    for p in parts[1:]:
        if p["tokenizer"] != first["tokenizer"]:
            raise UserError(f"the parts in {folder} were prepared with different tokenizers (part 1: "
                            f"{first['tokenizer'].get('kind')}, part {p['part'][0]}: {p['tokenizer'].get('kind')}); "
                            "prepare every part with the same --tokenizer")
        for key in ("dtype", "shard_tokens", "split"):
            if p[key] != first[key]:
                raise UserError(f"the parts in {folder} differ in {key}; prepare every part with the same settings")
    parts = sorted(parts, key=lambda p: p["part"][0])
    total = lambda key, s: sum(p[key][s] for p in parts)  # noqa: E731
    return {**{k: first[k] for k in ("format", "tokenizer", "dtype", "shard_tokens", "split", "separator")},
            "parts": n, "part": [1, 1], "sources": [s for p in parts for s in p["sources"]],
            "documents": {s: total("documents", s) for s in ("train", "val", "skipped")},
            "tokens": {s: total("tokens", s) for s in ("train", "val")}, "shards": [sh for p in parts for sh in p["shards"]]}


def merge_parts(folder: str | Path) -> dict:
    """Write manifest.json for the parts prepared into `folder`; returns it."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        raise UserError(f"{folder} already has a manifest.json; nothing to merge")
    merged = merge_manifests([json.loads(p.read_text()) for p in sorted(folder.glob("manifest-p*of*.json"))], folder)
    write_atomic(folder / "manifest.json", (json.dumps(merged, indent=1) + "\n").encode())
    return merged


def load_shards(folder: str | Path) -> TokenData:
    """A prepared dataset's shards as memory maps, after checking each file has the size its manifest says."""
    folder = Path(folder)
    m = merged_manifest(folder)
    dtype = np.dtype(m["dtype"])
    splits = {"train": [], "val": []}
    for sh in m["shards"]:
        path = folder / sh["file"]
        if not path.is_file() or path.stat().st_size != sh["tokens"] * dtype.itemsize:
            raise UserError(f"{path} is missing or has the wrong size for its {sh['tokens']} tokens; prepare the "
                            "data again (the same command continues an interrupted preparation)")
        splits[sh["split"]].append(np.memmap(path, dtype=dtype, mode="r", shape=(sh["tokens"],)))
    tokens = {s: sum(len(x) for x in v) for s, v in splits.items()}
    summary = f"{len(m['shards'])} shards, {tokens['train']:,} train and {tokens['val']:,} validation tokens"
    return TokenData(m["tokenizer"], splits, folder, summary, m)


def _from_cache(p: cache.Prepared) -> TokenData:
    return TokenData(p.tokenizer_meta, {"train": [p.train], "val": [p.val]}, p.folder,
                     f"{p.train_tokens:,} train and {p.val_tokens:,} validation tokens")


def open_prepared(folder: str | Path) -> TokenData | None:
    """A folder that holds prepared tokens (shards, or the cache's train.bin/val.bin) as TokenData; None for
    any other path. The one place that recognises and opens a prepared folder."""
    folder = Path(folder).expanduser()
    if is_sharded(folder):
        return load_shards(folder)
    if folder.is_dir() and (folder / "meta.json").is_file() and (folder / "train.bin").is_file():
        return _from_cache(cache.load_prepared(folder))
    return None


def open_data(source: str, tokenizer: str, cache_dir: str, val_fraction: float) -> TokenData:
    """The token data of `data.source` (see the module docstring); `tokenizer` must match a prepared folder's."""
    d = open_prepared(source)
    if d is None:
        d = _from_cache(cache.prepare(source, tokenizer, cache_dir, val_fraction))
    _check_tokenizer(d, tokenizer)
    return d


def _check_tokenizer(d: TokenData, tokenizer: str) -> None:
    kind = d.tokenizer_meta.get("kind")
    folder = get_tokenizer(tokenizer) if Path(tokenizer).is_dir() else None  # a trained BPE or a Hugging Face one
    wanted = folder.name if folder else tokenizer
    if kind != wanted:
        raise UserError(f"the data in {d.folder} was tokenized with {kind}; set --data.tokenizer="
                        f"{kind if kind not in ('bpe', 'hf') else 'the folder of that tokenizer'} "
                        f"(data.tokenizer={tokenizer})")
    if folder and folder.meta() != d.tokenizer_meta:
        raise UserError(f"the data in {d.folder} was tokenized with another tokenizer than {tokenizer}; use the same "
                        "tokenizer folder or prepare the data again")


def window_positions(sizes: list[int], batch: int, block_size: int, seed: int, step: int):
    """(shard index, start) of each of `batch` windows of block_size + 1 tokens: uniform over all windows
    that fit in one shard, seeded by (seed, step). Raises when no shard is long enough."""
    valid = np.array([max(n - block_size, 0) for n in sizes], np.int64)  # starts 0 .. n - T - 1 fit T + 1 tokens
    total = int(valid.sum())
    if total == 0:
        longest = max(sizes, default=0)
        raise UserError(f"no shard of this split has the {block_size + 1} tokens one window needs (the longest has "
                        f"{longest}); lower model.block_size or use more data")
    rng = np.random.default_rng((seed, step))
    u = rng.integers(0, total, size=batch)  # for one shard, the very draw of windows.window_starts
    ends = np.cumsum(valid)
    shard = np.searchsorted(ends, u, side="right")
    return shard, u - (ends[shard] - valid[shard])


class Windows:
    """Windows shard[s][t : t + T + 1] for arrays of (shard, start), read only where indexed: a batch's rows
    stay on disk until a process asks for its own (see sharding.put_batch)."""

    def __init__(self, shards: list[np.ndarray], which: np.ndarray, starts: np.ndarray, block_size: int):
        self.shards, self.which, self.starts, self.block_size = shards, which, starts, block_size
        self.shape = (*starts.shape, block_size + 1)

    def __getitem__(self, index: tuple) -> np.ndarray:  # the last (token) dimension is never split
        which, starts = self.which[index[:-1]], self.starts[index[:-1]]
        out = np.empty((*starts.shape, self.block_size + 1), np.int32)
        for s in np.unique(which):
            rows = which == s
            out[rows] = windows.read_windows(self.shards[s], starts[rows], self.block_size)
        return out[..., index[-1]]


def batch_windows(shards: list[np.ndarray], batch_shape: tuple[int, ...], block_size: int, seed: int,
                  step: int) -> Windows:
    """The windows of `step`, shaped batch_shape + (T + 1,)."""
    n = int(np.prod(batch_shape))
    which, starts = window_positions([len(s) for s in shards], n, block_size, seed, step)
    return Windows(shards, which.reshape(batch_shape), starts.reshape(batch_shape), block_size)
