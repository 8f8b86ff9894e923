"""Reading corpora: the embedded Shakespeare, a text file or a folder of .txt files, as documents, and the
validation split taken from the tail of each document."""

from __future__ import annotations

from pathlib import Path

from jaxgpt.data.shakespeare import shakespeare_plays
from jaxgpt.errors import UserError
from jaxgpt.files import read_text

SHAKESPEARE = "shakespeare"

# --- user corpora -------------------------------------------------------------------------------------

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


# --- batches ------------------------------------------------------------------------------------------


