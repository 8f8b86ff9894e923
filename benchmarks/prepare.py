"""Corpus preparation throughput: `jaxgpt prepare` on a generated corpus against single-thread tiktoken.

    python benchmarks/prepare.py                        # 1 GB of JSON lines, every core
    python benchmarks/prepare.py --size-mb 200 --workers 1 2

The corpus is JSON lines of documents cut from the embedded Shakespeare (2 to 8 KB each, repeated to the
asked size), written to a temporary folder. Single-thread tiktoken is `encode_ordinary` of the same
documents in this process, timed on a sample. For each worker count it prints MB/s and tokens/s of the
whole preparation (reading, tokenizing, hashing, writing shards), the efficiency against workers x the
single-thread rate, and the peak resident memory of the main process and of any one worker.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxgpt.data.shakespeare import shakespeare_text
from jaxgpt.tokenizer.kinds import _gpt2_encoding

ROOT = Path(__file__).resolve().parent.parent


def make_corpus(folder: Path, size_mb: int, files: int = 8) -> list[str]:
    """JSON-lines files totalling about size_mb of text; returns a sample of the documents."""
    text, rng = shakespeare_text(), random.Random(0)
    target, written, sample = size_mb * 1_000_000, 0, []
    handles = [open(folder / f"part-{i:02d}.jsonl", "w", encoding="utf-8") for i in range(files)]
    while written < target:
        start, length = rng.randrange(len(text) - 8000), rng.randint(2000, 8000)
        doc = text[start:start + length]
        handles[rng.randrange(files)].write(json.dumps({"text": doc}) + "\n")
        written += len(doc.encode())
        if len(sample) < 10000:
            sample.append(doc)
    for h in handles:
        h.close()
    return sample


def single_thread_rate(sample: list[str]) -> tuple[float, float]:
    """(MB/s, tokens/s) of tiktoken's GPT-2 encode_ordinary on one thread, one pass over the sample after a
    short warm-up."""
    enc = _gpt2_encoding()
    for d in sample[:50]:
        enc.encode_ordinary(d)
    t0 = time.perf_counter()
    tokens = sum(len(enc.encode_ordinary(d)) for d in sample)
    dt = time.perf_counter() - t0
    return sum(len(d.encode()) for d in sample) / dt / 1e6, tokens / dt


def run_prepare(src: Path, out: Path, workers: int) -> dict:
    """One `jaxgpt prepare` in a process of its own (so its peak memory is its own)."""
    code = ("import json, resource, sys, time\n"
            "from jaxgpt.data.shards import prepare_shards\n"
            "from jaxgpt.tokenizer.kinds import GPT2Tokenizer\n"
            "t0 = time.perf_counter()\n"
            f"m = prepare_shards([{str(src)!r}], {str(out)!r}, GPT2Tokenizer().meta(), workers={workers}, "
            "log=lambda s: None)\n"
            "dt = time.perf_counter() - t0\n"
            "print(json.dumps({'seconds': dt, 'tokens': sum(m['tokens'].values()), "
            "'main_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
            "'worker_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1])
    ap.add_argument("--tmp", default=None, help="where the corpus and shards go (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        src = Path(tmp) / "corpus"
        src.mkdir()
        sample = make_corpus(src, args.size_mb)
        size = sum(p.stat().st_size for p in src.iterdir())
        mbs, tps = single_thread_rate(sample)
        print(f"corpus: {size / 1e6:,.0f} MB of JSON lines in {len(list(src.iterdir()))} files; CPU: "
              f"{os.cpu_count()} cores; single-thread tiktoken: {mbs:.2f} MB/s, {tps:,.0f} tokens/s\n")
        print("| workers | seconds | MB/s | tokens/s | vs workers x single thread | peak RSS main / worker |")
        print("|---:|---:|---:|---:|---:|---:|")
        for w in args.workers:
            r = run_prepare(src, Path(tmp) / f"out-{w}", w)
            rate = r["tokens"] / r["seconds"]
            print(f"| {w} | {r['seconds']:.1f} | {size / r['seconds'] / 1e6:.2f} | {rate:,.0f} | "
                  f"{rate / (w * tps):.0%} | {r['main_rss_mb']:,.0f} MB / {r['worker_rss_mb']:,.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
