"""Continuous batching: a fixed number of slots share one KV cache, and requests join and leave between
decode steps.

One thread owns the device. Each turn of its loop it moves waiting requests into free slots, prefills one
chunk of every prompt not yet read, and runs one decode step over all slots at once. Both steps are
compiled once per shape: the decode step for (slots,), the prefill for chunks of 1, 2, 4, ... up to
`chunk` tokens (a prompt is read as a sum of powers of two, so nothing is padded and no slot ever holds a
key it did not compute). Every slot decodes at its own position (the model takes a position per row), and
rows never mix: a request's tokens depend on its own prompt, settings and seed, not on what else is served.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import traceback
from collections import deque
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.model.gpt import GPT, KVCache
from jaxgpt.model.sampling import prefill, sample_rows

OFF_SLOT = -1


@dataclasses.dataclass(eq=False)
class Job:
    """One sequence to continue. `emit(token)` is called from the engine's thread for every new token and
    `finish(reason)` once at the end ("stop": end-of-text, "length": max_tokens, "cancelled")."""

    prompt: list[int]
    max_tokens: int
    emit: Callable[[int], None]
    finish: Callable[[str], None]
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0
    eot_id: int | None = None
    cancelled: bool = False
    generated: int = 0
    read: int = 0  # prompt tokens prefilled so far

    def cancel(self) -> None:
        """Free the job's slot at the engine's next turn (a disconnected client, a stop sequence)."""
        self.cancelled = True


def _chunks(n: int, largest: int) -> int:
    """The next chunk of a prompt with n tokens left: the largest power of two <= min(n, largest)."""
    return 1 << (min(n, largest).bit_length() - 1)


class Engine:
    def __init__(self, model: GPT, params, slots: int = 16, chunk: int = 64, context: int | None = None,
                 vocab: int | None = None) -> None:
        """`context`: the tokens a slot holds, prompt and reply (default and most: the model's block_size);
        `vocab`: the tokenizer's size, when the model has more embedding rows than ids (Qwen3), never drawn."""
        if slots < 1 or chunk < 1:
            raise ValueError("slots and chunk must be at least 1")
        self.model, self.params, self.slots = model, params, slots
        self.vocab = vocab if vocab and vocab < model.config.vocab_size else None
        self.context = min(context or model.config.block_size, model.config.block_size)
        self.chunk = 1 << (min(chunk, self.context).bit_length() - 1)  # a power of two
        self.cache = KVCache.init(model.config, slots, self.context)  # (slots, KV, context, D) per layer
        self._jobs: list[Job | None] = [None] * slots
        self._last = np.zeros(slots, np.int32)  # the token each decoding slot feeds next
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run
        self.finished = {"stop": 0, "length": 0, "cancelled": 0, "error": 0}  # jobs ended, by reason
        self.failed: str | None = None  # the error that stopped the engine
        self._prefill = jax.jit(self._prefill_fn, donate_argnums=1)
        self._decode = jax.jit(self._decode_fn, donate_argnums=1)

    # -- compiled steps ---------------------------------------------------------------------------------
    def _prefill_fn(self, params, cache, slot, tokens, pos, settings, draws):
        """Read tokens (T,) into `slot` at `pos`; the token after them, sampled with settings (3,) and draws
        (2,) as in `_decode_fn`'s rows."""
        row = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, slot, 1), cache)  # (1, KV, S, D): one slot
        logits, row = prefill(self.model, params, tokens[None], row, pos)  # (1, V)
        cache = jax.tree.map(lambda a, r: jax.lax.dynamic_update_slice_in_dim(a, r, slot, 0), cache, row)
        return self._sample(self._known(logits), settings[None], draws[None]), cache  # (1,)

    def _decode_fn(self, params, cache, tokens, pos, settings, draws):
        """One token for every slot: tokens (slots,) at their own positions pos (slots,); settings (slots, 3)
        float32 = temperature, top_k, top_p; draws (slots, 2) uint32 = seed, index of the token drawn (its
        random key is the seed's key folded with the index)."""
        logits, cache = self.model.apply({"params": params}, tokens[:, None], cache=cache, pos=pos)  # (slots, 1, V)
        return self._sample(self._known(logits[:, -1]), settings, draws), cache  # (slots,)

    def _known(self, logits):
        """Logits (B, V) with the rows past the tokenizer's last id at -inf."""
        if self.vocab is None:
            return logits
        return jnp.where(jnp.arange(logits.shape[-1])[None] < self.vocab, logits, -jnp.inf)

    @staticmethod
    def _sample(logits, settings, draws):
        temperature, top_k, top_p = (settings[:, i] for i in range(3))  # (B,) each
        keys = jax.vmap(lambda d: jax.random.fold_in(jax.random.key(d[0]), d[1]))(draws)  # (B,) keys
        return sample_rows(logits, keys, temperature, top_k.astype(jnp.int32), top_p)

    @staticmethod
    def _settings(job: Job | None) -> tuple[list[float], list[int]]:
        if job is None:
            return [0.0, 0.0, 1.0], [0, 0]
        return [job.temperature, job.top_k, job.top_p], [job.seed, job.generated]

    def warm(self) -> None:
        """Compile the decode step and every prefill shape now, not on the first requests."""
        settings, draws = (np.asarray(a, t) for a, t in zip(self._settings(None), (np.float32, np.uint32)))
        size = 1
        while size <= self.chunk:
            _, self.cache = self._prefill(self.params, self.cache, 0, np.zeros(size, np.int32), 0, settings, draws)
            size *= 2
        zeros = np.zeros(self.slots, np.int32)
        _, self.cache = self._decode(self.params, self.cache, zeros, zeros, np.tile(settings, (self.slots, 1)),
                                     np.tile(draws, (self.slots, 1)))

    # -- the loop -----------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if len(job.prompt) < 1 or len(job.prompt) + job.max_tokens > self.context or job.max_tokens < 1:
            raise ValueError(f"a job needs 1 <= prompt and 1 <= max_tokens with both <= {self.context}")
        with self._wake:
            if self._stopping:
                raise RuntimeError(self.failed or "the engine has stopped")
            self._waiting.append(job)
            self._wake.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="jaxgpt-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel what is left and end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def busy(self) -> int:
        return sum(j is not None for j in self._jobs) + len(self._waiting)

    def _loop(self) -> None:
        reason = "cancelled"
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and all(j is None for j in self._jobs):
                    self._wake.wait()
                if self._stopping:
                    break
                while self._waiting and self._waiting[0].cancelled:  # its client left while it waited
                    self._waiting.popleft().finish("cancelled")
                    self.finished["cancelled"] += 1
                for slot in range(self.slots):  # admit waiting jobs into free slots
                    if self._jobs[slot] is None and self._waiting:
                        self._jobs[slot] = self._waiting.popleft()
            try:
                self._turn()
            except Exception:  # a device or compiler error: end every job with it, take no more
                traceback.print_exc()
                self.failed, reason = traceback.format_exc().strip().splitlines()[-1], "error"
                break
        with self._wake:
            self._stopping = True
            left = [j for j in itertools.chain(self._jobs, self._waiting) if j is not None]
            self._jobs, self._waiting = [None] * self.slots, deque()
        for job in left:
            self.finished[reason] += 1
            job.finish(reason)

    def _end(self, slot: int, reason: str) -> None:
        job, self._jobs[slot] = self._jobs[slot], None
        self.finished[reason] += 1
        job.finish(reason)

    def _accept(self, slot: int, token: int) -> None:
        """A new token for the job in `slot`: hand it over, and end the job when it is done."""
        job = self._jobs[slot]
        job.generated += 1
        if job.eot_id is not None and token == job.eot_id:
            return self._end(slot, "stop")
        job.emit(token)
        self._last[slot] = token
        if job.generated >= job.max_tokens:
            self._end(slot, "length")

    def _turn(self) -> None:
        for slot, job in enumerate(self._jobs):
            if job is not None and job.cancelled:
                self._end(slot, "cancelled")
        decoding = np.zeros(self.slots, bool)
        for slot, job in enumerate(self._jobs):
            if job is None:
                continue
            if job.read < len(job.prompt):  # one chunk of its prompt
                n = _chunks(len(job.prompt) - job.read, self.chunk)
                tokens = jnp.asarray(job.prompt[job.read:job.read + n], jnp.int32)
                settings, draws = self._settings(job)
                token, self.cache = self._prefill(self.params, self.cache, slot, tokens, job.read,
                                                  np.asarray(settings, np.float32), np.asarray(draws, np.uint32))
                job.read += n
                if job.read == len(job.prompt):
                    self._accept(slot, int(token[0]))
            else:
                decoding[slot] = True
        if not decoding.any():
            return
        # Slots not decoding write their (unused) key at the last position, which no job ever attends to: a
        # job's prompt and tokens fit the context, and its final token is never fed back.
        pos = np.array([len(j.prompt) + j.generated - 1 if d else self.context - 1
                        for j, d in zip(self._jobs, decoding)], np.int32)
        rows = [self._settings(j if d else None) for j, d in zip(self._jobs, decoding)]
        tokens, self.cache = self._decode(self.params, self.cache, self._last, pos,
                                          np.array([r[0] for r in rows], np.float32),
                                          np.array([r[1] for r in rows], np.uint32))
        tokens = np.asarray(tokens)
        self.steps += 1
        for slot in np.flatnonzero(decoding):
            if self._jobs[slot] is not None:
                self._accept(int(slot), int(tokens[slot]))
