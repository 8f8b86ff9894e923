"""`jaxgpt serve` as a user runs it: a real server process on localhost, spoken to with the official `openai`
client and plain HTTP. The main server holds a random Qwen3 with a chat template (transformers made it); a
second, with one slot, a random GPT-2-vocabulary model for the limits (429, a client leaving mid-stream,
SIGTERM) and the Alpaca chat format."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import jax
import pytest
from conftest import save_bpe_model
from test_decoders_workflow import qwen  # noqa: F401 (the fixture)

from jaxgpt.finetune.instruct import chat_prompt
from jaxgpt.model.gpt import GPT
from jaxgpt.model.sampling import generate
from jaxgpt.store.loader import load

openai = pytest.importorskip("openai")


class Served:
    """`jaxgpt serve MODEL --port 0 ...` in its own process; the port read from its start-up line."""

    def __init__(self, model, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "jaxgpt", "serve", str(model), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            m = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise AssertionError("the server did not start:\n" + "".join(lines))
        self.log = lines  # the rest of its output, read as it comes (a full pipe would stop the server)
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = model.name

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: bytes | dict):
        """(status, parsed JSON) of a POST, errors included."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("POST", path, body if isinstance(body, bytes) else json.dumps(body),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


@pytest.fixture(scope="module")
def server(qwen):  # noqa: F811
    s = Served(qwen[0], "--slots", "16", "--chunk", "8")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def loaded(qwen):  # noqa: F811
    return load(qwen[0])


def greedy(loaded, ids: list[int], n: int) -> list[int]:
    """What `jaxgpt sample --temperature 0` generates after `ids`: up to n tokens, cut at end-of-text."""
    out = generate(GPT(loaded.config), loaded.gpt_params, ids, n, temperature=0.0,
                   eot_id=loaded.tokenizer().eot_id)[0, len(ids):].tolist()
    eot = loaded.tokenizer().eot_id
    return out[:out.index(eot)] if eot in out else out


def sample_text(loaded, prompt: str, n: int) -> str:
    tok = loaded.tokenizer()
    return tok.decode(greedy(loaded, tok.encode(prompt, add_special_tokens=True), n))


PROMPTS = [f"{w} number {i}" for i, w in enumerate(["hello", "the cat", "你好", "once upon", "a b c", "x"] * 3)][:16]


def test_models_health_and_a_greedy_completion(server, loaded):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [server.name]
    assert server.health()["status"] == "ok"
    r = client.completions.create(model=server.name, prompt="hello world", max_tokens=12, temperature=0)
    assert r.choices[0].text == sample_text(loaded, "hello world", 12)
    assert r.choices[0].finish_reason in ("length", "stop")
    prompt_len = len(loaded.tokenizer().encode("hello world", add_special_tokens=True))
    assert (r.usage.prompt_tokens, r.usage.total_tokens) == (prompt_len, prompt_len + r.usage.completion_tokens)


def test_sixteen_concurrent_clients_get_what_each_gets_alone(server, loaded):
    """Greedy output equals `jaxgpt sample`'s for the same prompt while 15 other requests decode beside it,
    with prompts of different lengths read in chunks of different sizes."""
    client = server.client()
    prompts = [p * (1 + i % 4) for i, p in enumerate(PROMPTS)]  # 4 to about 60 tokens

    def ask(p):
        return client.completions.create(model=server.name, prompt=p, max_tokens=20, temperature=0).choices[0].text

    steps = server.health()["decode_steps"]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, prompts))
    assert got == [sample_text(loaded, p, 20) for p in prompts]
    assert server.health()["decode_steps"] - steps < 16 * 19  # the requests shared decode steps


def test_streams_join_to_the_whole_answer(server):
    client = server.client()
    whole = client.completions.create(model=server.name, prompt="the cat", max_tokens=15, temperature=0)
    chunks = list(client.completions.create(model=server.name, prompt="the cat", max_tokens=15, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    messages = [{"role": "user", "content": "你好, who are you?"}]
    reply = client.chat.completions.create(model=server.name, messages=messages, max_tokens=10, temperature=0)
    parts = list(client.chat.completions.create(model=server.name, messages=messages, max_tokens=10, temperature=0,
                                                stream=True))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == reply.choices[0].message.content


def test_chat_answers_as_jaxgpt_chat(server, loaded):
    """The chat template of the model's tokenizer, rendered as `jaxgpt chat` renders it."""
    tok = loaded.tokenizer()
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another?"}]
    want = tok.decode(greedy(loaded, tok.encode(chat_prompt(tok, messages, alpaca=False)), 12))
    r = server.client().chat.completions.create(model=server.name, messages=messages, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"


def test_stop_sequences_end_the_text_before_them(server, loaded):
    client = server.client()
    full = sample_text(loaded, "once upon", 30)
    stop = next(full[i:i + 3] for i in range(4, len(full) - 3)  # three characters first found at i
                if full[i:i + 3].strip() and full.find(full[i:i + 3]) == i)
    want = full[:full.find(stop)]
    r = client.completions.create(model=server.name, prompt="once upon", max_tokens=30, temperature=0,
                                  stop=[stop, "never appears here"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want, "stop")
    chunks = list(client.completions.create(model=server.name, prompt="once upon", max_tokens=30, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want


def test_n_choices_and_seeds(server):
    client = server.client()

    def ask(**kw):
        return client.completions.create(model=server.name, prompt="a b c", max_tokens=10, temperature=1.0, **kw)

    three = ask(n=3, seed=7)
    assert [c.index for c in three.choices] == [0, 1, 2]
    texts = [c.text for c in three.choices]
    assert len(set(texts)) > 1  # each choice draws its own tokens
    assert [c.text for c in ask(n=3, seed=7).choices] == texts  # a seed repeats them
    assert ask(seed=7).choices[0].text == texts[0]  # choice i is seed + i
    assert ask(seed=8).choices[0].text == texts[1]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # and busy neighbours do not change them
        assert set(pool.map(lambda _: ask(seed=7, top_p=0.9, extra_body={"top_k": 20}).choices[0].text, range(8))) == \
            {ask(seed=7, top_p=0.9, extra_body={"top_k": 20}).choices[0].text}


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    ({"model": "gpt-4", "prompt": "hi"}, "model"),
    ({"prompt": list(range(5, 300))}, "prompt"),  # longer than the context of 256
    ({"prompt": "hi", "max_tokens": 1000}, "max_tokens"),
    ({"prompt": "hi", "temperature": 3}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "n": 0}, "n"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "hi", "stream_options": 1}, "stream_options"),
    (b'{"prompt": "hi", "temperature": NaN}', None),
])
def test_bad_requests_get_openai_errors_and_harm_nothing(server, body, param):
    status, out = server.post("/v1/completions", body)
    assert status == 400 and out["error"]["type"] == "invalid_request_error" and out["error"]["message"]
    assert out["error"]["param"] == param
    assert server.health()["status"] == "ok"


def test_bad_chat_requests(server):
    for body in ({"messages": []}, {"messages": [{"role": "user"}]}, {"messages": "hi"},
                 {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
                 {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 999}):
        status, out = server.post("/v1/chat/completions", body)
        assert status == 400 and out["error"]["message"], body
    with pytest.raises(openai.BadRequestError, match="temperature"):
        server.client().chat.completions.create(model=server.name, messages=[{"role": "user", "content": "hi"}],
                                                temperature=-1)


# --- limits: one slot, two requests at most -----------------------------------------------------------------


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


# --- the chat page, in headless Chromium ----------------------------------------------------------------------


def _chromium() -> str:
    for path in (os.environ.get("JAXGPT_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if path and os.path.exists(path):
            return path
    pytest.skip("no Chromium (Debian: apt-get install chromium; or set JAXGPT_CHROMIUM)")


def test_the_chat_page_streams_a_reply(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    messages = [{"role": "user", "content": "Name a colour."}]
    want = server.client().chat.completions.create(model=server.name, messages=messages, max_tokens=12,
                                                   temperature=0).choices[0].message.content
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            assert server.name in page.title()
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "12")
            page.fill("#input", messages[0]["content"])
            page.press("#input", "Enter")
            page.wait_for_selector(".assistant[data-done=true]", timeout=60_000)
            assert page.inner_text(".user") == messages[0]["content"]
            assert page.eval_on_selector(".assistant", "e => e.textContent") == want
            page.screenshot(path=str(os.environ.get("JAXGPT_SCREENSHOT", tmp_path / "chat.png")))
        finally:
            browser.close()


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
