"""The HTTP server: OpenAI's `/v1/completions`, `/v1/chat/completions` and `/v1/models`, `/health`, and a
chat page at `/`, as a Starlette application over one `Engine`.

Every request is read and checked before anything is queued, so a bad one costs a 400 and nothing else.
A response streams as server-sent events when asked (`stream: true`); a stream whose client goes away
cancels its jobs, and the engine frees their slots at its next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from jaxgpt.errors import UserError
from jaxgpt.finetune.instruct import chat_prompt
from jaxgpt.model.gpt import GPT
from jaxgpt.serve import api
from jaxgpt.serve.engine import Engine, Job
from jaxgpt.store.loader import Loaded
from jaxgpt.tokenizer.kinds import unknown_characters

PAGE = Path(__file__).with_name("page.html")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


class _Stream(StreamingResponse):
    """A streaming response that runs `on_close` however it ends (finished, client gone, server stopping)."""

    def __init__(self, content, on_close) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class Server:
    """One loaded model behind the API. `slots` requests decode at once; up to `max_concurrent` are
    accepted (the rest wait for a slot), more get HTTP 429."""

    def __init__(self, loaded: Loaded, name: str, slots: int = 16, chunk: int = 64, max_concurrent: int = 64,
                 context: int | None = None) -> None:
        if loaded.task and loaded.task.get("task") == "classify":
            raise UserError(f"{loaded.path} is a classifier; serve a language model (a run, a converted or "
                            "instruction-finetuned model, or a Hugging Face directory)")
        self.tokenizer = loaded.tokenizer("serve text")
        self.name, self.max_concurrent, self.active = name, max_concurrent, 0
        self.alpaca = bool(loaded.task and loaded.task.get("task") == "instruct")
        self.engine = Engine(GPT(loaded.config), loaded.gpt_params, slots=slots, chunk=chunk, context=context,
                             vocab=self.tokenizer.vocab_size)

    # -- requests -------------------------------------------------------------------------------------------
    async def _body(self, request: Request) -> dict:
        try:
            body = json.loads(await request.body(), parse_constant=_no_constant)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            raise api.BadRequest(f"the request body is not valid JSON ({e})") from None
        except RecursionError:
            raise api.BadRequest("the request body is nested too deeply") from None
        if not isinstance(body, dict):
            raise api.BadRequest("the request body must be a JSON object")
        model = body.get("model", self.name)
        if model != self.name:
            raise api.BadRequest(f"this server has no model {model!r}; it serves {self.name!r}", "model",
                                 code="model_not_found")
        return body

    def _encode(self, text: str, param: str, special: bool) -> list[int]:
        unknown = unknown_characters(self.tokenizer, [text])
        what = "prompt" if param == "prompt" else "prompt made of the messages"
        if unknown:
            raise api.BadRequest(f"the {what} has characters this model does not know: {''.join(unknown[:8])!r}",
                                 param)
        if self.tokenizer.name == "hf":  # as `jaxgpt sample`: a bare prompt gets what the model expects first
            return self.tokenizer.encode(text, add_special_tokens=special)
        return self.tokenizer.encode(text)

    def _prompt(self, body: dict) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self._encode(prompt, "prompt", special=True)
        elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):  # token ids (not bools)
            if not all(0 <= t < self.engine.model.config.vocab_size for t in prompt):
                raise api.BadRequest("'prompt' has token ids outside the vocabulary", "prompt")
            ids = prompt
        else:
            raise api.BadRequest("'prompt' must be one string or one list of token ids", "prompt")
        if not ids:
            raise api.BadRequest("the prompt encodes to no tokens; give a non-empty prompt", "prompt")
        return ids

    def _messages(self, body: dict) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise api.BadRequest("'messages' must be a non-empty list of {role, content}", "messages")
        plain = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):  # content parts: only text
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise api.BadRequest("only text content parts ({'type': 'text', 'text': ...}) are supported",
                                         "messages")
                content = "".join(p["text"] for p in content)
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
                raise api.BadRequest("each message needs a 'role' and a text 'content'", "messages")
            plain.append({"role": m["role"], "content": content})
        try:
            prompt = chat_prompt(self.tokenizer, plain, self.alpaca)
        except UserError as e:  # the chat template refused them (roles, order)
            raise api.BadRequest(str(e), "messages") from None
        return self._encode(prompt, "messages", special=False)

    # -- generation -----------------------------------------------------------------------------------------
    async def _generate(self, request: Request, chat: bool):
        body = await self._body(request)
        # From here to `self.active += 1` nothing awaits, so no other request can pass this check meanwhile.
        if self.engine.failed:
            raise api.BadRequest(f"the model failed ({self.engine.failed}); restart the server", status=503,
                                 kind="server_error")
        if self.active >= self.max_concurrent:
            raise api.BadRequest(f"the server is busy ({self.max_concurrent} requests in flight); retry shortly",
                                 status=429, kind="rate_limit_error", code="rate_limit_exceeded")
        ids = self._messages(body) if chat else self._prompt(body)
        settings = api.sampling(body)
        limit = api.max_tokens(body, len(ids), self.engine.context, None if chat else COMPLETION_DEFAULT_TOKENS)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        eot_id = None if settings["ignore_eos"] else self.tokenizer.eot_id
        jobs = []
        for i in range(settings["n"]):  # choice i draws with seed + i
            jobs.append(Job(ids, limit, temperature=settings["temperature"], top_k=settings["top_k"],
                            top_p=settings["top_p"], seed=(settings["seed"] + i) % (1 << 32), eot_id=eot_id,
                            emit=lambda t, i=i: loop.call_soon_threadsafe(events.put_nowait, (i, "token", t)),
                            finish=lambda r, i=i: loop.call_soon_threadsafe(events.put_nowait, (i, "end", r))))
        self.active += 1
        try:
            for job in jobs:
                self.engine.submit(job)
        except RuntimeError as e:  # the engine stopped (shutting down, or failed)
            for job in jobs:
                job.cancel()
            self.active -= 1
            raise api.BadRequest(f"the server is not taking requests ({e})", status=503,
                                 kind="server_error") from None
        streams = [api.TextStream(self.tokenizer.decode, settings["stop"]) for _ in jobs]
        rid, created = api.new_id("chatcmpl" if chat else "cmpl"), int(time.time())

        async def events_of():
            """(choice, new text, finish reason or None) until every choice has finished."""
            open_ = set(range(len(jobs)))
            while open_:
                i, kind, value = await events.get()
                if i not in open_:
                    continue
                if kind == "token":
                    text = streams[i].add(value)
                    if streams[i].stopped:  # a stop sequence: the text ends before it
                        jobs[i].cancel()
                        open_.discard(i)
                        yield i, text, "stop"
                    elif text:
                        yield i, text, None
                elif value == "error":
                    raise api.BadRequest(f"the model failed ({self.engine.failed})", status=500,
                                         kind="server_error")
                else:
                    open_.discard(i)
                    yield i, streams[i].flush(), "stop" if value == "stop" else "length"

        def close():
            for job in jobs:
                job.cancel()
            self.active -= 1

        def used():  # completion tokens: those the choices generated, an end-of-text token not counted
            return api.usage(len(ids), sum(len(s.tokens) for s in streams))

        if settings["stream"]:
            async def sse():
                first = set()
                try:
                    async for i, text, finish in events_of():
                        c = api.choice(chat, i, text, finish, delta=True, first=i not in first)
                        first.add(i)
                        yield f"data: {json.dumps(api.envelope(chat, rid, self.name, [c], True, created))}\n\n"
                except api.BadRequest as e:  # the model failed mid-stream: say so, as OpenAI's streams do
                    yield f"data: {json.dumps(e.body())}\n\n"
                    return
                if settings["include_usage"]:
                    final = api.envelope(chat, rid, self.name, [], True, created)
                    final["usage"] = used()
                    yield f"data: {json.dumps(final)}\n\n"
                yield "data: [DONE]\n\n"

            return _Stream(sse(), close)
        async def watch():  # a client that leaves before the answer cancels its jobs
            while (await request.receive())["type"] != "http.disconnect":
                pass
            for job in jobs:
                job.cancel()

        watcher = asyncio.create_task(watch())
        try:
            texts, finishes = [""] * len(jobs), [None] * len(jobs)
            async for i, text, finish in events_of():
                texts[i] += text
                finishes[i] = finish or finishes[i]
        finally:
            watcher.cancel()
            close()
        choices = [api.choice(chat, i, t, f) for i, (t, f) in enumerate(zip(texts, finishes))]
        out = api.envelope(chat, rid, self.name, choices, False, created)
        out["usage"] = used()
        return JSONResponse(out)

    # -- routes ---------------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        async def guarded(handler, request):
            try:
                return await handler(request)
            except api.BadRequest as e:
                return JSONResponse(e.body(), status_code=e.status)

        async def completions(request):
            return await guarded(lambda r: self._generate(r, chat=False), request)

        async def chat(request):
            return await guarded(lambda r: self._generate(r, chat=True), request)

        async def models(request):
            return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                                             "owned_by": "jaxgpt"}]})

        async def health(request):
            failed = self.engine.failed
            return JSONResponse({"status": f"error: {failed}" if failed else "ok", "slots": self.engine.slots,
                                 "busy": self.engine.busy(), "requests": self.active,
                                 "decode_steps": self.engine.steps, "finished": self.engine.finished},
                                status_code=503 if failed else 200)

        async def page(request):
            page = PAGE.read_text().replace("{{MODEL_HTML}}", html.escape(self.name))
            return HTMLResponse(page.replace("{{MODEL_JSON}}", json.dumps(self.name).replace("</", "<\\/")))

        async def not_found(request, exc):
            return JSONResponse(api.BadRequest(f"no route {request.url.path}", status=404).body(), status_code=404)

        @contextlib.asynccontextmanager
        async def lifespan(app):
            self.engine.start()
            try:
                yield
            finally:
                self.engine.stop()

        routes = [Route("/v1/completions", completions, methods=["POST"]),
                  Route("/v1/chat/completions", chat, methods=["POST"]),
                  Route("/v1/models", models), Route("/health", health), Route("/", page)]
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found})
