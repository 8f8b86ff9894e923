"""Files in and out, so that nothing is lost: the one atomic writer, the one reader of a user's text, and
output folders written all or nothing, never over something else."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from jaxgpt.errors import UserError

OUTPUT_MARKER = ".jaxgpt-output"  # written into every folder staged_dir makes; only such folders are replaced


@contextlib.contextmanager
def staged_dir(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `dst`; on success it becomes `dst` in one rename.

    An existing `dst` is refused unless `overwrite`, and even then only if it is empty or was itself
    written by this function (it holds OUTPUT_MARKER): a mistyped path never deletes someone's folder,
    and a training run (whose folder train.py writes) is never replaced. A symbolic link is refused
    rather than followed or replaced. On any error the staging folder is removed and `dst` is left as it was.
    """
    dst = Path(dst)
    if dst.is_symlink():
        raise UserError(f"{dst} is a symbolic link; give the folder itself (or a new path) as the destination")
    if dst.exists():
        if not overwrite:
            raise UserError(f"{dst} already exists; choose a new destination or pass --overwrite to replace it")
        if not dst.is_dir() or (any(dst.iterdir()) and not (dst / OUTPUT_MARKER).is_file()):
            raise UserError(f"{dst} exists and is not an earlier jaxgpt output (no {OUTPUT_MARKER}); "
                            "refusing to replace it")
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot create {tmp}: {e.strerror}; check the destination's folder and permissions") from None
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text("written by jaxgpt; --overwrite may replace this folder\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old)
    else:
        tmp.rename(dst)


def read_json_object(path: str | Path, fix: str) -> dict:
    """A JSON object from `path`, or a one-line error that ends with `fix` (what the user should do)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is damaged or unreadable ({e}); {fix}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} is damaged (not a JSON object); {fix}")
    return d


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview | str) -> None:
    """Write `data` (str as UTF-8) to `path` whole or not at all: a temporary file beside it, then one rename,
    so a kill mid-write leaves the old file or none, never a truncated one. The folder is made if needed.
    A failure is a UserError naming the path (a full disk says so)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise UserError(f"the disk holding {path.parent} is full; free some space and run the same command "
                            "again") from None
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def write_json(path: str | Path, obj, indent: int = 2) -> None:
    """`obj` as JSON (a trailing newline), written atomically."""
    write_atomic(path, json.dumps(obj, indent=indent) + "\n")


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
