"""The `jaxgpt serve` command: an OpenAI-compatible HTTP server for one model (`jaxgpt/serve/`).

    jaxgpt serve MODEL [--host 127.0.0.1] [--port 8000] [--slots 16] [--max-concurrent 64]

MODEL is anything `load` reads: a run, a converted GPT-2, an instruction finetune, a Hugging Face
directory. Needs the `serve` extra (Starlette and uvicorn). SIGTERM or Ctrl-C stops taking requests, lets
those in flight finish for up to --grace seconds, cancels the rest and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import socket
from pathlib import Path

from jaxgpt.errors import UserError

# Rotary models declare long contexts (Qwen3: 40,960) and every slot holds a whole context of keys and values.
DEFAULT_CONTEXT = 4096


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: OpenAI's /v1/completions and /v1/chat/completions "
                       "(streaming, continuous batching) and a chat page at /")
    p.add_argument("model", help="a run directory, a converted or finetuned model, or a Hugging Face directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="the model's name in the API (default: the directory's name)")
    p.add_argument("--slots", type=int, default=16, help="sequences decoded at once (they share one KV cache)")
    p.add_argument("--context", type=int, default=None,
                   help="tokens each slot holds, prompt and reply (default: the model's context, at most 4096)")
    p.add_argument("--chunk", type=int, default=64, help="prompt tokens read per prefill step (a power of two)")
    p.add_argument("--max-concurrent", type=int, default=64,
                   help="requests accepted at once (beyond --slots they wait for a slot); more get HTTP 429")
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight requests may finish after SIGTERM")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a run (default: latest)")
    p.set_defaults(fn=run)


def _modules():
    try:
        import uvicorn  # noqa: F401

        from jaxgpt.serve.app import Server  # needs starlette
    except ImportError as e:
        raise UserError(f"jaxgpt serve needs the serve extra ({e.name} is missing): "
                        "pip install -e '.[serve]'") from None
    return uvicorn, Server


def run(args: argparse.Namespace) -> int:
    from jaxgpt.store.loader import load

    for flag, value in (("--slots", args.slots), ("--chunk", args.chunk), ("--max-concurrent", args.max_concurrent)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    uvicorn, Server = _modules()
    loaded = load(args.model, args.step)
    block = loaded.config.block_size
    if args.context is not None and not 1 < args.context <= block:
        raise UserError(f"--context must be in 2..{block} (this model's context), got {args.context}")
    server = Server(loaded, args.name or Path(args.model).resolve().name, slots=args.slots, chunk=args.chunk,
                    max_concurrent=args.max_concurrent, context=args.context or min(block, DEFAULT_CONTEXT))
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # before the address is printed: a client may connect at once
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port or "
                        "--host") from None
    print(f"compiling the decode and prefill steps for {args.slots} slots ...", flush=True)
    server.engine.warm()
    config = uvicorn.Config(server.app(), log_level="warning", timeout_graceful_shutdown=args.grace)
    port = sock.getsockname()[1]
    print(f"serving {server.name!r} ({args.slots} slots, context {server.engine.context}) at "
          f"http://{args.host}:{port}/ (OpenAI API under /v1)", flush=True)
    # uvicorn shuts down gracefully on SIGTERM and SIGINT, then raises the signal again under the handlers it
    # found: these make that a clean exit (0) instead of a death by signal or a KeyboardInterrupt traceback.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:  # a second Ctrl-C skips uvicorn's shutdown, and with it the engine's
        server.engine.stop()
    return 0
