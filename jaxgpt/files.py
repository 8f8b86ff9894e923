"""Writing output directories so that nothing is lost: all or nothing, and never over something else."""

from __future__ import annotations

import contextlib
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
