"""Measure the compiled train step and the cached decode loop of a config; print a markdown table.

    python benchmarks/throughput.py                          # the default recipe
    python benchmarks/throughput.py --config configs/gpt2_124m.py --train.batch_size=8
    python benchmarks/throughput.py --config configs/gpt2_124m.py --model.dtype=bfloat16 --model.remat=dots  # a GPU

Times are medians over --repeats timed runs after one warm-up (compilation), synchronised with
block_until_ready. MFU is against the peak that `jaxgpt.report.progress.peak_flops` reports (on a CPU, a
float32 matmul measured at start-up).
"""

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxgpt import config as config_lib

from jaxgpt import recipe
from jaxgpt.model import objectives
from jaxgpt.train.engine import Engine
from jaxgpt.model.gpt import GPT, for_backend
from jaxgpt.report.progress import flops_per_token, peak_flops
from jaxgpt.model.sampling import generate


def median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up: compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shakespeare_char.py")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=None, help="default: 65 for char, else GPT-2's")
    parser.add_argument("--new-tokens", type=int, default=128)
    args, overrides = parser.parse_known_args(argv)
    cfg = recipe.apply_overrides(recipe.load_config_file(args.config), overrides)
    vocab = args.vocab_size or (65 if cfg.data.tokenizer == "char" else 50257)
    mcfg = config_lib.ModelConfig(**{**cfg.model.__dict__, "vocab_size": vocab})
    tc, T = cfg.train, mcfg.block_size

    cfg = dataclasses.replace(cfg, model=mcfg)
    model = GPT(for_backend(mcfg, tc.batch_size // tc.grad_accum))  # the attention kernel decided as train.py does
    engine = Engine(cfg, model, objectives.language_model(model))  # the real step: mesh, shardings, donation
    state, frozen = engine.start()
    rng = np.random.default_rng(0)
    windows = rng.integers(0, vocab, (tc.grad_accum, tc.batch_size // tc.grad_accum, T + 1)).astype(np.int32)
    batch = engine.put((windows,))
    holder = [state]

    def one_step():
        holder[0], metrics = engine.train_step(holder[0], batch, frozen)
        return metrics

    train_s = median_seconds(one_step, args.repeats)
    train_tps = tc.batch_size * T / train_s
    prompt = rng.integers(0, vocab, (1, 16))
    new = min(args.new_tokens, T - 16)
    gen = lambda: generate(model, holder[0].params, prompt, new, key=jax.random.key(0), temperature=0)
    gen_s = median_seconds(gen, args.repeats)
    peak = peak_flops()
    mfu = train_tps * flops_per_token(mcfg, engine.n_params) / peak if peak else float("nan")
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; model: {engine.n_params:,} "
          f"parameters, context {T}, vocab {vocab}; compute {mcfg.dtype}, attention {model.config.attention}, "
          f"remat {mcfg.remat}\n")
    print("| case | median time | tokens/s | MFU |\n|---|---|---|---|")
    print(f"| train step, batch {tc.batch_size} x {T} | {train_s * 1e3:.1f} ms | {train_tps:,.0f} | {mfu:.1%} |")
    print(f"| generate, batch 1, {new} new tokens, greedy | {gen_s * 1e3:.1f} ms | {new / gen_s:,.0f} | |")


if __name__ == "__main__":
    main()
