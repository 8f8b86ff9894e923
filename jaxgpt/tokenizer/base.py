"""What every tokenizer shares: the special tokens' text and the checks of ids handed to `decode`.

A tokenizer (see kinds.py and bpe.py) has `name`, `vocab_size`, `eot_id`, `encode(text) -> list[int]`,
`decode(ids) -> str` and `meta()`, a JSON-serialisable dict that `tokenizer_from_meta` turns back into it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import numpy as np

from jaxgpt.errors import UserError

ENDOFTEXT = "<|endoftext|>"  # GPT-2's document separator, the special token of every BPE
UNK = "<|unk|>"


def to_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """`ids` as Python ints, each checked to lie in [0, vocab_size): what `decode` accepts."""
    try:
        # operator.index accepts numpy integers but refuses floats, which would silently truncate.
        out = [operator.index(i) for i in ids]
    except TypeError:
        raise UserError("token ids must be integers; convert the array with .astype(int) first") from None
    bad = next((i for i in out if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise UserError(f"token id {bad} is outside the vocabulary [0, {vocab_size}); "
                        "decode ids produced by this same tokenizer")
    return out


def describe_characters(chars: list[str], limit: int = 8) -> str:
    """"'#', '%', '@'" for a message; past `limit` characters, "(and N more)"."""
    shown = ", ".join(map(repr, chars[:limit]))
    return shown + (f" (and {len(chars) - limit} more)" if len(chars) > limit else "")


def token_dtype(vocab_size: int) -> np.dtype:
    """How token ids are stored on disk: uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
