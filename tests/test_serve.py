"""`jaxgpt serve` as a user runs it: a real server process on localhost, spoken to with the official `openai`
client, plain HTTP and headless Chromium (the chat page). The server holds a random Qwen3 with a chat template
(transformers made it). The limits are in test_serve_limits.py."""

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
import urllib.request

import pytest
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
