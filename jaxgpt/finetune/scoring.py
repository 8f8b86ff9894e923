"""Scoring a generated response against its reference: exact match after `normalize` (quotes,
whitespace, a trailing full stop) and SQuAD-style token F1, and their means over a test set (`score`)."""

from __future__ import annotations

import string
from collections import Counter

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2018": "'",
                         "\u2019": "'", "\u201a": "'", "\u201b": "'", "`": "'"})


def normalize(text: str) -> str:
    """For exact match: unify quotes, strip, collapse whitespace runs to one space, drop one trailing '.'.

    Letter case is kept: the case-changing tasks depend on it.
    """
    text = " ".join(text.translate(_QUOTES).split())
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def exact_match(prediction: str, reference: str) -> bool:
    """Whether prediction and reference are equal after `normalize`."""
    return normalize(prediction) == normalize(reference)


def _tokens(text: str) -> list[str]:
    stripped = (token.strip(string.punctuation) for token in text.translate(_QUOTES).lower().split())
    return [token for token in stripped if token]


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over lower-cased whitespace tokens with surrounding punctuation stripped.

    Overlap counts tokens as a multiset. Both empty: 1.0; exactly one empty: 0.0.
    """
    pred, ref = _tokens(prediction), _tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """{"exact_match": fraction of exact matches, "token_f1": mean token F1, "n": count} (0.0s when empty)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = len(references)
    if n == 0:
        return {"exact_match": 0.0, "token_f1": 0.0, "n": 0}
    matches = sum(exact_match(p, r) for p, r in zip(predictions, references))
    f1 = sum(token_f1(p, r) for p, r in zip(predictions, references))
    return {"exact_match": matches / n, "token_f1": f1 / n, "n": n}
