"""OpenAI's request and response formats: reading a request's settings (each wrong value a `BadRequest`
naming its parameter), turning tokens into text that streams without breaking a character or leaking a
stop sequence, and the JSON bodies of responses, chunks and errors."""

from __future__ import annotations

import secrets
import uuid

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_STOP_CHARS = 500  # each is looked for at every token
MAX_N = 16


class BadRequest(Exception):
    """A request the server refuses with OpenAI's error JSON."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _number(body: dict, name: str, default, low: float, high: float, integer: bool = False, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BadRequest(f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if not low <= value <= high or (low_open and value == low):  # NaN and inf are not JSON, and refused
        where = f"{'(' if low_open else '['}{low}, {high}]"
        raise BadRequest(f"'{name}' must be in {where}, got {value!r}", name)
    return value


def sampling(body: dict) -> dict:
    """The sampling settings of a completion or chat request, checked: temperature [0, 2] (0 greedy; OpenAI's
    default 1), top_p (0, 1], seed, n, stop, stream; and, as vLLM and llama.cpp take them, top_k >= 0 (0 off)
    and ignore_eos."""
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOP or
                             not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)):
        raise BadRequest(f"'stop' must be a string or a list of at most {MAX_STOP}, each of 1 to {MAX_STOP_CHARS} "
                         "characters", "stop")
    if not isinstance(body.get("stream_options") or {}, dict):
        raise BadRequest("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"'seed' must be an integer, got {seed!r}", "seed")
    for flag in ("stream", "ignore_eos"):
        if body.get(flag) not in (None, True, False):
            raise BadRequest(f"'{flag}' must be true or false", flag)
    return {
        "temperature": float(_number(body, "temperature", 1.0, 0, 2)),
        "top_p": float(_number(body, "top_p", 1.0, 0, 1, low_open=True)),
        "top_k": int(_number(body, "top_k", 0, 0, 1 << 30, integer=True)),
        "n": int(_number(body, "n", 1, 1, MAX_N, integer=True)),
        "stop": stop or [],
        "seed": (secrets.randbits(32) if seed is None else seed) % (1 << 32),  # the engine's keys take 32 bits
        "stream": bool(body.get("stream")),
        "ignore_eos": bool(body.get("ignore_eos")),  # vLLM's: go on past end-of-text (benchmarks)
        "include_usage": bool((body.get("stream_options") or {}).get("include_usage")),
    }


def max_tokens(body: dict, prompt_tokens: int, context: int, default: int | None) -> int:
    """How many tokens to generate: the request's max_tokens (or chat's max_completion_tokens), else
    `default` (OpenAI's 16 for completions) or, when None, what is left of the context."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    left = context - prompt_tokens
    if left < 1:
        raise BadRequest(f"the prompt has {prompt_tokens} tokens and this model reads at most {context - 1} before "
                         "its first new token; shorten the prompt", "messages" if "messages" in body else "prompt",
                         code="context_length_exceeded")
    n = _number(body, name, None, 1, 1 << 30, integer=True)
    if n is None:
        return min(default, left) if default is not None else left
    if n > left:
        raise BadRequest(f"'{name}' is {n}, but the prompt's {prompt_tokens} tokens leave room for {left} in this "
                         f"model's context of {context}; ask for at most {left}", name, code="context_length_exceeded")
    return n


class TextStream:
    """The text of a growing token list, released only where it is final: not inside a character whose
    bytes are still arriving, and not a tail that might begin a stop sequence."""

    def __init__(self, decode, stop: list[str]) -> None:
        self.decode, self.stop = decode, stop
        self.tokens: list[int] = []
        self.sent = 0  # characters released
        self.stopped = False  # a stop sequence appeared: the text ends before it

    def add(self, token: int) -> str:
        """Take a token; return the newly final text."""
        self.tokens.append(token)
        text = self.decode(self.tokens)
        hits = [i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(text[:min(hits)])
        end = len(text.rstrip("\ufffd"))  # an unfinished multi-byte character decodes as U+FFFD for now
        hold = 0  # the longest tail that a stop sequence may continue is held back
        for s in self.stop:
            longer = (k for k in range(min(len(s) - 1, end), hold, -1) if text.endswith(s[:k], 0, end))
            hold = next(longer, hold)
        end -= hold
        return self._release(text[:end])

    def flush(self) -> str:
        """The rest, at the end of generation (a partial stop sequence is text after all)."""
        return "" if self.stopped else self._release(self.decode(self.tokens))

    def _release(self, text: str) -> str:
        out = text[self.sent:] if len(text) > self.sent else ""
        self.sent = max(self.sent, len(text))
        return out


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def choice(chat: bool, index: int, text: str, finish: str | None, delta: bool = False, first: bool = False) -> dict:
    """One entry of `choices`: a chat message or delta, or a completion's text."""
    if not chat:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
    if delta:
        d = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        return {"index": index, "delta": d, "logprobs": None, "finish_reason": finish}
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish}


def envelope(chat: bool, rid: str, model: str, choices: list[dict], chunk: bool, created: int) -> dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
