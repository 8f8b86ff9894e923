"""Drive `jaxgpt serve` with 1, 4 and 16 concurrent clients; print tokens/s, time to first token and latency
percentiles as a markdown table.

    python benchmarks/serve.py --model out/shakespeare_char --prompt-tokens 8 --max-tokens 48
    python benchmarks/serve.py --gpt2-random /tmp/gpt2-124m --prompt-tokens 128 --max-tokens 128

--gpt2-random DIR writes (once) a model of GPT-2 124M's shape with random weights and GPT-2's tokenizer, as
`jaxgpt convert` would leave OpenAI's: the time a step takes depends on the shape, not the values. Every
request streams (`stream: true`), is greedy, and asks `ignore_eos` so that it generates exactly
--max-tokens. Each client sends --requests requests one after another; tokens/s is all generated tokens
over the wall time of the level. The server runs in its own process with --slots 16 (the default), each
level after a warm-up request.
"""

import argparse
import concurrent.futures
import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def gpt2_random(path: Path) -> Path:
    import jax

    from jaxgpt.config import Config, DataConfig, ModelConfig
    from jaxgpt.model.gpt import init_params
    from jaxgpt.store import checkpoint
    from jaxgpt.tokenizer.kinds import GPT2Tokenizer

    if not (path / "config.json").exists():
        cfg = ModelConfig.preset("gpt2")
        checkpoint.save_model(path, Config(model=cfg, data=DataConfig(tokenizer="gpt2")),
                              init_params(cfg, jax.random.key(0)), GPT2Tokenizer().meta(), {})
    return path


def start(model: Path, slots: int, context: int | None):
    extra = ["--context", str(context)] if context else []
    proc = subprocess.Popen([sys.executable, "-m", "jaxgpt", "serve", str(model), "--port", "0", "--slots", str(slots),
                             "--max-concurrent", "256", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:
        m = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit("the server did not start")


def one_request(port: int, prompt: list[int], max_tokens: int) -> dict:
    """Stream one completion; (time to first token, total latency, tokens) in seconds."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    first, tokens, buffer = None, 0, ""
    while data := r.read1(65536):
        buffer += data.decode()
        *events, buffer = buffer.split("\n\n")  # complete events; the rest waits for more bytes
        for event in events:
            if not event.startswith("data: {"):
                continue
            chunk = json.loads(event[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    return {"ttft": first if first is not None else time.perf_counter() - t0, "latency": time.perf_counter() - t0,
            "tokens": tokens}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="any model directory `jaxgpt serve` reads")
    g.add_argument("--gpt2-random", help="a folder for a random model of GPT-2 124M's shape (written once)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--context", type=int, default=None, help="the server's --context (default: the model's)")
    args = p.parse_args()
    model = Path(args.model) if args.model else gpt2_random(Path(args.gpt2_random))
    proc, port = start(model, args.slots, args.context)
    try:
        prompt = [(13 + 7 * i) % 50 + 1 for i in range(args.prompt_tokens)]  # ids every vocabulary has
        one_request(port, prompt, args.max_tokens)  # warm-up
        print(f"\n{model}: prompt {args.prompt_tokens} tokens, {args.max_tokens} generated, {args.slots} slots, "
              f"context {args.context or 'of the model'}\n")
        print("| clients | requests | tokens/s | time to first token p50 / p90 | latency p50 / p90 / p99 |")
        print("|---:|---:|---:|---|---|")
        for c in args.clients:
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(c) as pool:
                runs = list(pool.map(
                    lambda _: [one_request(port, prompt, args.max_tokens) for _ in range(args.requests)], range(c)))
            wall = time.perf_counter() - t0
            results = [r for run in runs for r in run]
            ttft, lat = [r["ttft"] for r in results], [r["latency"] for r in results]
            print(f"| {c} | {len(results)} | {sum(r['tokens'] for r in results) / wall:,.0f} | "
                  f"{statistics.median(ttft) * 1e3:,.0f} / {pct(ttft, 90) * 1e3:,.0f} ms | "
                  f"{statistics.median(lat):.2f} / {pct(lat, 90):.2f} / {pct(lat, 99):.2f} s |", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)


if __name__ == "__main__":
    main()
