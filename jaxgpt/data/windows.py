"""Batches from a token array: random training windows by (seed, step), and the book's sliding windows.

`get_batch` draws `batch_size` windows of block_size + 1 tokens whose starts depend on (seed, step) alone,
so a resumed run reads the same batches; `sliding_windows` and `iterate_batches` are the book's
input/target dataset (chapter 2) with a stride and shuffled batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jaxgpt.errors import UserError


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
