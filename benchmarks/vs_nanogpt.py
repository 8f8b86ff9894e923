"""jaxgpt's train step against a nanoGPT-style PyTorch GPT, side by side, on the same recipe and tokens.

    python benchmarks/vs_nanogpt.py                     # the default char recipe and the GPT-2 BPE recipe
    python benchmarks/vs_nanogpt.py --steps 20 --rounds 9 --json out/vs_nanogpt.json

The PyTorch side is written here in nanoGPT's architecture: pre-LayerNorm blocks, one fused q/k/v
projection, `torch.nn.functional.scaled_dot_product_attention(is_causal=True)`, a tanh-GELU MLP (GPT-2's,
as jaxgpt's), the head tied to the token embedding, GPT-2's initialisation, and AdamW with weight decay on
matrices only (nanoGPT's two groups, `foreach`), the recipe's warmup + cosine schedule and global-norm
clipping; eager float32, as nanoGPT runs on a CPU; a recipe's `grad_accum` micro-batches as nanoGPT takes
them (each micro-batch's loss / grad_accum, backward, summed). jaxgpt's side is `Trainer` (the run's own
engine and jitted step). Both train on the recipe's token file (`data.cache.prepare`) with the same batches
(data.windows.get_batch, seeded by the step).

Each side runs in a process of its own and is warmed up (jaxgpt compiles there); then, round after
round, each runs --steps consecutive steps, the sides taking turns (the order reverses every round), and
the median over rounds of the time per step is reported, with tokens/s and the ratio (> 1: jaxgpt
faster). Where the recipe accumulates, PyTorch also runs the batch in one piece, and the ratio is against
the faster of its two steps.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPES = {"char": "configs/shakespeare_char.py", "bpe": "configs/shakespeare_gpt2bpe.py"}


def _config(recipe: str, overrides: list[str]):
    from jaxgpt.recipe import apply_overrides, load_config_file

    return apply_overrides(load_config_file(ROOT / RECIPES[recipe]), overrides)


# --- the PyTorch side --------------------------------------------------------------------------------------

def torch_worker(cfg, data, threads: int):
    """A step function of a nanoGPT-style GPT in PyTorch for this recipe."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m, tc = cfg.model, cfg.train
    V, C, H, T = m.vocab_size, m.n_embd, m.n_head, m.block_size

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T_, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)  # (B, T, C) each
            q, k, v = (a.view(B, T_, H, C // H).transpose(1, 2) for a in (q, k, v))  # (B, H, T, D)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T_, C)
            x = x + self.attn_proj(y)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(m.n_layer))
            self.ln_f = nn.LayerNorm(C)
            for name, p in self.named_parameters():  # GPT-2's initialisation
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * m.n_layer) if name.endswith("proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # the tied head
            return F.cross_entropy(logits.view(-1, V), targets.view(-1))

    model = GPT().train()
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), foreach=True)
    decay = tc.decay_steps or tc.max_steps

    def lr(step):  # the recipe's schedule: linear warmup, cosine to min_lr
        if step < tc.warmup_steps:
            return tc.learning_rate * step / tc.warmup_steps
        frac = min((step - tc.warmup_steps) / max(decay - tc.warmup_steps, 1), 1.0)
        return tc.min_lr + 0.5 * (tc.learning_rate - tc.min_lr) * (1 + math.cos(math.pi * frac))

    def step(i: int):
        from jaxgpt.data.windows import get_batch

        x, y = (torch.from_numpy(a.astype(np.int64)) for a in get_batch(data, tc.batch_size, T, tc.seed, i))
        for g in opt.param_groups:
            g["lr"] = lr(i)
        opt.zero_grad(set_to_none=True)
        n = tc.grad_accum  # nanoGPT's gradient accumulation: each micro-batch's mean loss / n, summed
        for xm, ym in zip(x.view(n, -1, T), y.view(n, -1, T)):
            loss = model(xm, ym) / n
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        return loss.detach() * n  # the last micro-batch's mean

    return step


# --- jaxgpt's side -----------------------------------------------------------------------------------------

def jax_worker(cfg):
    from jaxgpt.train.pretrain import Trainer

    trainer = Trainer(cfg)
    engine, task = trainer.engine, trainer.task
    state, frozen = engine.start()
    holder = [state]

    def step(i: int):  # no host sync: the training loop syncs only at log intervals
        holder[0], metrics = engine.train_step(holder[0], engine.put(task.batch(i)), frozen)
        return metrics["loss"]

    return step


def worker(side: str, recipe: str, overrides: list[str], threads: int) -> None:
    """Serve `run N` requests on stdin: N steps, answered with the seconds they took and the last loss."""
    cfg = _config(recipe, overrides)
    if side == "jaxgpt":
        step = jax_worker(cfg)
    else:
        from jaxgpt.data.cache import prepare
        from jaxgpt.tokenizer.kinds import tokenizer_from_meta
        import dataclasses

        p = prepare(cfg.data.source, cfg.data.tokenizer, cfg.data.cache_dir, cfg.data.val_fraction)
        vocab = tokenizer_from_meta(p.tokenizer_meta).vocab_size
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
        step = torch_worker(cfg, p.train, threads)
    i = 0
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line.split()[1])
        t0 = time.perf_counter()
        for _ in range(n):
            loss = step(i)
            i += 1
        loss = float(loss)  # waits for the last step (jaxgpt dispatches asynchronously)
        print(json.dumps({"seconds": time.perf_counter() - t0, "loss": loss}), flush=True)


class Side:
    def __init__(self, side: str, recipe: str, overrides: list[str], threads: int):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", side, "--recipe", recipe,
                                      "--threads", str(threads), *overrides], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        while (line := self.proc.stdout.readline()) and line.strip() != "ready":
            pass  # the trainer's own messages

    def run(self, n: int) -> dict:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("a benchmark worker died")
            if line.startswith("{"):
                return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def compare(recipe: str, args) -> dict:
    overrides = [f"--train.out_dir={ROOT / 'out' / ('bench_' + recipe)}", "--train.progress=false", *args.override]
    cfg = _config(recipe, overrides)
    plans = {"jaxgpt": ("jaxgpt", overrides), "torch": ("torch", overrides)}
    if cfg.train.grad_accum > 1:  # PyTorch's step may be faster on the batch in one piece: time that too
        plans["torch_whole"] = ("torch", [*overrides, "--train.grad_accum=1", "--train.grad_accum_unroll=1"])
    sides = {name: Side(side, recipe, over, args.threads) for name, (side, over) in plans.items()}
    for s in sides.values():
        s.run(args.warmup)  # compilation (jaxgpt), allocator and thread-pool warm-up (both)
    times = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            times[name].append(sides[name].run(args.steps)["seconds"] / args.steps)
    for s in sides.values():
        s.close()
    tokens = cfg.train.batch_size * cfg.model.block_size
    out = {name: {"median_step_s": statistics.median(t), "steps_s": t,
                  "tokens_per_s": tokens / statistics.median(t)} for name, t in times.items()}
    out["best_torch_tokens_per_s"] = max(out[name]["tokens_per_s"] for name in out if name.startswith("torch"))
    out["ratio"] = out["jaxgpt"]["tokens_per_s"] / out["best_torch_tokens_per_s"]  # against PyTorch's faster step
    out["shape"] = (f"{cfg.model.n_layer} layers, {cfg.model.n_head} heads, width {cfg.model.n_embd}, context "
                    f"{cfg.model.block_size}, batch {cfg.train.batch_size} in {cfg.train.grad_accum}, "
                    f"{cfg.data.tokenizer}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--steps", type=int, default=10, help="steps per timed call")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None, help="also write the results here (a new file)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--recipe", default=None, help=argparse.SUPPRESS)
    args, override = ap.parse_known_args()
    args.override = override
    if args.worker:
        return worker(args.worker, args.recipe, override, args.threads)
    from jaxgpt import config as config_lib
    from jaxgpt.errors import UserError

    try:  # a bad override or an existing results file is refused in one line, before any work
        for recipe in args.recipes:
            config_lib.validate(_config(recipe, override))
        if args.json and Path(args.json).exists() and not args.overwrite:
            raise UserError(f"{args.json} already exists; choose another --json or pass --overwrite")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    import jax
    import torch

    results = {"date": datetime.date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
               "jax": jax.__version__, "torch": torch.__version__, "threads": args.threads, "cases": {}}
    print(f"jaxgpt (jax {jax.__version__}) vs nanoGPT-style PyTorch ({torch.__version__}, eager float32), "
          f"{args.threads} threads; median of {args.rounds} rounds of {args.steps} steps\n")
    print("| recipe | shape | jaxgpt ms/step | torch ms/step | torch, whole batch | jaxgpt tok/s | best torch tok/s "
          "| jaxgpt / torch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for recipe in args.recipes:
        r = results["cases"][recipe] = compare(recipe, args)
        j, t = r["jaxgpt"], r["torch"]
        whole = f"{1e3 * r['torch_whole']['median_step_s']:.1f}" if "torch_whole" in r else "-"
        print(f"| {recipe} | {r['shape']} | {1e3 * j['median_step_s']:.1f} | {1e3 * t['median_step_s']:.1f} | "
              f"{whole} | {j['tokens_per_s']:,.0f} | {r['best_torch_tokens_per_s']:,.0f} | {r['ratio']:.2f} |",
              flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
