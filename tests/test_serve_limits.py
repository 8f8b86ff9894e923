"""`jaxgpt serve` at its limits, with a second server (one slot, two requests at most) over a random
GPT-2-vocabulary model: HTTP 429, clients that leave mid-answer, SIGTERM with a request in flight, the Alpaca
chat format; and the engine alone (ids past the tokenizer, a failing device)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import jax
import pytest
from conftest import save_bpe_model
from test_serve import Served, greedy

from jaxgpt.finetune.instruct import chat_prompt
from jaxgpt.model.gpt import GPT
from jaxgpt.store.loader import load

pytest.importorskip("openai")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return save_bpe_model(tmp_path_factory.mktemp("served") / "gpt", block_size=1024)


def _open_stream(port: int, max_tokens: int = 1000):
    """A streaming completion whose response has started (its headers read); the connection stays open."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "Hello", "max_tokens": max_tokens, "stream": True,
                                                        "temperature": 0}), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def _wait(cond, seconds: float = 60):
    end = time.time() + seconds
    while not cond():
        assert time.time() < end, "timed out"
        time.sleep(0.05)


def test_limits_disconnects_and_alpaca_chat(small):
    s = Served(small, "--slots", "1", "--max-concurrent", "2")
    try:
        (c1, r1), (c2, r2) = _open_stream(s.port), _open_stream(s.port)
        assert r1.status == r2.status == 200
        status, out = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 5})
        assert status == 429 and out["error"]["code"] == "rate_limit_exceeded"
        r1.read1(64)  # the first is decoding in the one slot: leave mid-stream
        c1.close()
        c2.close()
        _wait(lambda: s.health()["finished"]["cancelled"] == 2 and s.health()["requests"] == 0)
        assert s.health()["busy"] == 0
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)  # leaves before a whole answer
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "Hello", "max_tokens": 1000, "ignore_eos": True}),
                     {"Content-Type": "application/json"})
        _wait(lambda: s.health()["busy"] == 1)
        conn.close()
        _wait(lambda: s.health()["finished"]["cancelled"] == 3 and s.health()["busy"] == 0)

        model = load(small)  # chat on a model without a chat template: the Alpaca prompt of `finetune instruct`
        tok = model.tokenizer()
        prompt = chat_prompt(tok, [{"role": "user", "content": "Say hi."}], alpaca=True)
        want = tok.decode(greedy(model, tok.encode(prompt), 8))
        r = s.client().chat.completions.create(model=s.name, messages=[{"role": "user", "content": "Say hi."}],
                                               max_tokens=8, temperature=0)
        assert r.choices[0].message.content == want
    finally:
        s.stop()


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(small):
    s = Served(small, "--slots", "2")
    conn, r = _open_stream(s.port, max_tokens=300)
    first = r.read1(64)
    assert first.startswith(b"data: ")
    os.kill(s.proc.pid, signal.SIGTERM)
    rest = r.read()  # the stream goes on to its end
    events = (first + rest).decode().split("\n\n")
    assert events[-2] == "data: [DONE]"
    assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] == "length"
    assert s.proc.wait(timeout=60) == 0


# --- the engine alone -----------------------------------------------------------------------------------------


def _engine(**kw):
    from conftest import TINY_MODEL

    from jaxgpt.model.gpt import init_params
    from jaxgpt.serve.engine import Engine

    return Engine(GPT(TINY_MODEL), init_params(TINY_MODEL, jax.random.key(0)), slots=2, chunk=4, **kw)


def _run(engine, **job):
    from jaxgpt.serve.engine import Job

    out, ended = [], threading.Event()
    reason = []
    engine.submit(Job(emit=out.append, finish=lambda r: (reason.append(r), ended.set()), **job))
    assert ended.wait(120)
    return out, reason[0]


def test_the_engine_never_draws_past_the_tokenizer_and_reports_a_failure():
    engine = _engine(vocab=8)  # the model has 64 rows, its tokenizer 8 ids
    engine.start()
    try:
        tokens, reason = _run(engine, prompt=[1, 2, 3], max_tokens=12, temperature=2.0, seed=1)
        assert reason == "length" and len(tokens) == 12 and max(tokens) < 8

        def broken(*args):
            raise RuntimeError("device lost")

        engine._decode = broken
        _, reason = _run(engine, prompt=[1, 2, 3], max_tokens=5)
        assert reason == "error" and "device lost" in engine.failed
        with pytest.raises(RuntimeError, match="device lost"):
            _run(engine, prompt=[1], max_tokens=2)
    finally:
        engine.stop()
