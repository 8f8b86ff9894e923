"""Corpus sources for `jaxgpt prepare` and `jaxgpt tokenizer train`: files found, cut into pieces of work.

A source is a file, a folder (searched recursively) or a glob; several may be given. Kinds, by name:
- `.txt`: the whole file is one document (as `data.text.load_documents` reads it);
- `.jsonl`, `.jsonl.gz`, `.jsonl.zst`: one JSON object per line, its `field` is the document;
- `.parquet`: one document per row of the `field` column (FineWeb, HF copies of OpenWebText).

Files are taken in sorted order, so the stream of documents is the same on every machine and for every
number of workers; `part=(i, n)` takes every n-th file from the i-th (1-based), a disjoint share. The work
is cut into `Piece`s that the worker processes read themselves: about `piece_bytes` of a plain JSON-lines
file (the lines that start in a byte range), a Parquet row group, a whole compressed file, or a run of
text files. The cut depends on the files alone. Gzip needs nothing extra; Zstandard and Parquet need the
`jaxgpt[data]` extra (`zstandard`, `pyarrow`).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jaxgpt.errors import UserError
from jaxgpt.files import read_text

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
EXTRA = "pip install 'jaxgpt[data]'"


def kind_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def find_files(sources: list[str], part: tuple[int, int] = (1, 1)) -> list[Path]:
    """The corpus files of `sources` (files, folders, globs), sorted and without repeats; this part's share."""
    found: set[Path] = set()
    for source in sources:
        matches = [Path(p) for p in sorted(glob.glob(source, recursive=True))] if glob.has_magic(source) else [
            Path(source)]
        if not matches or not any(m.exists() for m in matches):
            raise UserError(f"corpus source {source!r} does not exist; give files, folders or globs of "
                            f"{', '.join(SUFFIXES)} files")
        for m in matches:
            if m.is_dir():
                found.update(p for p in m.rglob("*") if p.is_file() and kind_of(p))
            elif m.is_file():
                if not kind_of(m):
                    raise UserError(f"{m} is not a corpus file; jaxgpt reads {', '.join(SUFFIXES)}")
                found.add(m)
    files = sorted(found, key=lambda p: str(p.resolve()))
    if not files:
        raise UserError(f"no {', '.join(SUFFIXES)} files in {', '.join(sources)}; check the paths")
    i, n = part
    if not files[i - 1::n]:
        raise UserError(f"--part {i}/{n} has no input files: there are {len(files)} files for {n} parts; use at "
                        f"most {len(files)} parts")
    return files[i - 1::n]


@dataclass(frozen=True)
class Piece:
    """One unit of work: `paths` (one file, or a run of .txt files) of `kind`; for plain JSON lines the
    lines that start in bytes [start, end), for Parquet one row group (`start`)."""

    index: int  # position in the stream of pieces
    kind: str
    paths: tuple[str, ...]
    start: int = 0
    end: int = 0
    bytes: int = 0  # the input bytes it covers (for progress)


def pieces(files: list[Path], piece_bytes: int = 1 << 22) -> Iterator[Piece]:
    """The pieces of work of `files`, in order (see the module docstring)."""
    index, txt, txt_bytes = 0, [], 0

    def flushread_text():
        nonlocal index, txt, txt_bytes
        if txt:
            yield Piece(index, ".txt", tuple(txt), bytes=txt_bytes)
            index, txt, txt_bytes = index + 1, [], 0

    for path in files:
        kind, size = kind_of(path), path.stat().st_size
        if kind == ".txt":
            txt.append(str(path))
            txt_bytes += size
            if txt_bytes >= piece_bytes:
                yield from flushread_text()
            continue
        yield from flushread_text()
        if kind == ".jsonl":
            for start in range(0, max(size, 1), piece_bytes):
                yield Piece(index, kind, (str(path),), start, min(start + piece_bytes, size), min(piece_bytes, size - start))
                index += 1
        elif kind == ".parquet":
            groups = _parquet_file(path).num_row_groups
            for g in range(groups):
                yield Piece(index, kind, (str(path),), g, bytes=size // max(groups, 1))
                index += 1
        else:
            yield Piece(index, kind, (str(path),), bytes=size)
            index += 1
    yield from flushread_text()


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path} is a Parquet file, which needs the pyarrow package: {EXTRA}") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own types for damaged files
        raise UserError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None


def _line_number(path: str, offset: int) -> int:
    """The 1-based number of the line starting at byte `offset` (counted only when a message needs it)."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


_BLANK = object()  # a blank line: no document at all


def _json_text(raw: bytes, field: str, where, skip_bad: bool):
    """The text of one JSON line; None for a bad line skipped with skip_bad, _BLANK for a blank line.
    `where()` names the line for a message."""
    if not raw.strip():
        return _BLANK
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if skip_bad:
            return None
        raise UserError(f"{where()} is not JSON ({type(e).__name__}: {e}); fix the line or pass --skip-bad to "
                        "count and skip such lines") from None
    text = record.get(field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        if skip_bad:
            return None
        raise UserError(f"{where()} has no text field {field!r}; set --text-field or pass --skip-bad")
    return text


def _compressed(path: str, kind: str):
    try:
        if kind == ".jsonl.gz":
            return gzip.open(path, "rb")
        try:
            import zstandard
        except ImportError:
            raise UserError(f"{path} is Zstandard-compressed, which needs the zstandard package: {EXTRA}") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def documents(piece: Piece, field: str, skip_bad: bool) -> Iterator[str | None]:
    """The documents of one piece, in order; None for a bad line skipped with skip_bad (the caller counts)."""
    if piece.kind == ".txt":
        for path in piece.paths:
            yield read_text(path)
        return
    path = piece.paths[0]
    if piece.kind == ".parquet":
        pf = _parquet_file(Path(path))
        if field not in pf.schema_arrow.names:
            raise UserError(f"{path} has no column {field!r} (its columns: {', '.join(pf.schema_arrow.names)}); "
                            "set --text-field")
        try:
            column = pf.read_row_group(piece.start, columns=[field]).column(0).to_pylist()
        except Exception as e:
            raise UserError(f"{path} is damaged in row group {piece.start} ({str(e).splitlines()[0][:120]})") from None
        yield from (t if isinstance(t, str) else "" for t in column)
        return
    if piece.kind == ".jsonl":
        with open(path, "rb") as f:
            if piece.start:
                f.seek(piece.start - 1)
                f.readline()  # the rest of a line that starts before this piece belongs to the previous one
            while (pos := f.tell()) < piece.end:
                raw = f.readline()
                if not raw:
                    break
                text = _json_text(raw, field, lambda: f"{path}:{_line_number(path, pos)}", skip_bad)
                if text is not _BLANK:
                    yield text
        return
    line = 0
    with _compressed(path, piece.kind) as f:
        try:
            for raw in f:
                line += 1
                text = _json_text(raw, field, lambda: f"{path}:{line}", skip_bad)
                if text is not _BLANK:
                    yield text
        except UserError:
            raise
        except Exception as e:  # gzip and zstandard raise OSError, EOFError, ZstdError... for damaged data
            raise UserError(f"{path} is damaged or truncated after line {line} ({type(e).__name__}: {e}); "
                            "download it again") from None


def total_bytes(files: list[Path]) -> int:
    return sum(p.stat().st_size for p in files)
