"""Benchmark suite: jaxgpt against the PyTorch reference (transformers GPT2LMHeadModel), case by case.

    python benchmarks/suite.py                       # all cases, 5 timed repeats after 1 warm-up
    python benchmarks/suite.py --cases 1,3 --repeats 7 --threads 8 --json out/suite.json
    python benchmarks/suite.py --tiny                # tiny shapes: checks that the suite runs (seconds)

Cases: 1 train step, small model (4 layers, 4 heads, width 256, context 128, batch 8, vocab 50257);
2 train step, GPT-2 124M (context 128, batch 4); 3/4 greedy generation with the 124M model, 16-token prompt,
128 new tokens, KV cache, batch 1 / batch 8; 5 the first train step (compilation included) and the peak
resident memory of the 124M train step, each side in a fresh process of its own (after a first and a
second step). Peak RSS is the process's VmHWM on Linux: ru_maxrss (also recorded) would be wrong there,
because the kernel carries it across fork + exec, so a child starts at the parent's peak.

Method. Cases 1-4 build each side in a warm worker process of its own (one imports only jax, the other
only torch, as a user's program would), run --warmup untimed calls in each (jaxgpt compiles there),
then time --repeats calls ALTERNATING the two sides (which side goes first alternates too), each after
--pause seconds of idle, and report the median. Each timed call ends synchronised: jax.block_until_ready
on jaxgpt's outputs (generate returns a
numpy array), torch.cuda.synchronize on a GPU (torch on a CPU is synchronous). Tokens/s counts B x T
tokens per train step and B x new tokens per generation. MFU divides model FLOPs per second (train:
6 N + 12 L C T per token; generation: 2 N + 4 L C (prompt + new/2) per new token, prefill not counted; N
excludes the position table) by the float32 peak this script measures with a jitted HIGHEST-precision
jax matmul (median of 7), the same peak for both sides.

Honesty rules. Same shapes, float32 everywhere, dropout 0, random weights (independently initialised:
timings do not depend on values) and the same random token batches from a fixed seed. Same optimizer:
AdamW, lr 6e-4 constant (jaxgpt: lr_schedule constant, warmup 0), betas (0.9, 0.99), eps 1e-8, weight decay 0.1
on >= 2-D parameters only (torch gets the same two parameter groups), no gradient clipping on either side.
torch: eager attention, model.train() for steps, eval() + no_grad for generate (eos disabled, exactly the
same number of new tokens, checked). jaxgpt: the training engine's own jitted step (Engine.train_step: one
device mesh, donated state) on a (1, B, T) batch (it also computes the gradient norm and a finite check, its own metrics; torch does neither);
generate(temperature=0, eot_id=None). Threads: torch.set_num_threads(N); XLA sizes its
pool from the CPUs the process may use, so with --threads below the machine's count the process is pinned
to N CPUs (both sides). On a GPU, jax's default matmul precision is set to "highest" (no TF32; torch's
default). Setup and compilation are never timed except in case 5, which is about them.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LR, BETAS, EPS, WD = 6e-4, (0.9, 0.99), 1e-8, 0.1


def make_cases(tiny: bool) -> dict[int, dict]:
    gpt2, small, T, new = (dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
                           dict(vocab_size=50257, block_size=128, n_layer=4, n_head=4, n_embd=256), 128, 128)
    big = "GPT-2 124M"
    if tiny:  # a stand-in for every model: the suite's plumbing, not its numbers
        small = dict(vocab_size=512, block_size=32, n_layer=1, n_head=2, n_embd=64)
        gpt2, T, new, big = small, 32, 8, "tiny stand-in"
    return {
        1: dict(name=f"1 train step, {small['n_layer']}L/{small['n_embd']}w, batch 8 x {T}", kind="train",
                model=small, batch=8, seq=T),
        2: dict(name=f"2 train step, {big}, batch 4 x {T}", kind="train", model=gpt2, batch=4, seq=T),
        3: dict(name=f"3 generate, {big}, batch 1, 16 + {new} greedy", kind="gen", model=gpt2, batch=1,
                prompt=16, new=new),
        4: dict(name=f"4 generate, {big}, batch 8, 16 + {new} greedy", kind="gen", model=gpt2, batch=8,
                prompt=16, new=new),
        5: dict(name=f"5 train step, {big}, batch 4 x {T}, fresh process", kind="first", model=gpt2, batch=4, seq=T,
                rows=(f"5a first train step incl. compile, {big}", f"5b peak RSS, {big} train step")),
    }


def flops_per_token(case: dict) -> float:
    m = case["model"]
    C, L = m["n_embd"], m["n_layer"]
    n = m["vocab_size"] * C + L * (12 * C * C + 13 * C) + 2 * C  # every weight but the position table
    if case["kind"] == "gen":
        return 2 * n + 4 * L * C * (case["prompt"] + case["new"] / 2)
    return 6 * n + 12 * L * C * case["seq"]


def tokens(case: dict) -> int:
    return case["batch"] * (case["new"] if case["kind"] == "gen" else case["seq"])


def random_data(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of (B, T) for a train step, or (prompt (B, P), None): the same arrays for both sides."""
    rng = np.random.default_rng(0)
    if case["kind"] == "gen":
        return rng.integers(0, case["model"]["vocab_size"], (case["batch"], case["prompt"])).astype(np.int32), None
    t = rng.integers(0, case["model"]["vocab_size"], (case["batch"], case["seq"] + 1)).astype(np.int32)
    return t[:, :-1], t[:, 1:]


def setup_jax():
    import jax

    if jax.default_backend() != "cpu":
        jax.config.update("jax_default_matmul_precision", "highest")  # true float32, as torch does
    return jax


def jax_runner(case: dict, threads: int):
    """A function running one synchronised jaxgpt call of the case (built and placed, not yet compiled)."""
    jax = setup_jax()
    from jaxgpt.model import objectives
    from jaxgpt.config import Config, ModelConfig, TrainConfig
    from jaxgpt.train.engine import Engine
    from jaxgpt.model.gpt import GPT, init_params
    from jaxgpt.model.sampling import generate

    cfg = ModelConfig(**case["model"])
    model, params = GPT(cfg), init_params(cfg, jax.random.key(0))
    x, y = random_data(case)
    if case["kind"] == "gen":
        def run():
            out = generate(model, params, x, case["new"], key=jax.random.key(0), temperature=0.0, eot_id=None)
            assert out.shape == (case["batch"], case["prompt"] + case["new"]), out.shape
        return run
    train = TrainConfig(batch_size=case["batch"], learning_rate=LR, lr_schedule="constant", warmup_steps=0,
                        beta1=BETAS[0], beta2=BETAS[1], weight_decay=WD, grad_clip=0.0)
    engine = Engine(Config(model=cfg, train=train), model, objectives.language_model(model))  # train.py's own step
    state, frozen = engine.start(params)
    state = [state]
    batch = engine.put((x[None], y[None]))  # (grad_accum=1, B, T)

    def run():
        state[0], metrics = engine.train_step(state[0], batch, frozen)
        jax.block_until_ready((state[0], metrics))
    return run


def torch_runner(case: dict, threads: int):
    """The same for transformers' GPT2LMHeadModel (imports no jax, so case 5's RSS is torch's alone)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    m = case["model"]
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=m["vocab_size"], n_positions=m["block_size"], n_embd=m["n_embd"],
                     n_layer=m["n_layer"], n_head=m["n_head"], activation_function="gelu_new",
                     layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=None, eos_token_id=None, attn_implementation="eager")
    model = GPT2LMHeadModel(cfg).to(dev, torch.float32)
    assert model.config._attn_implementation == "eager"
    x, y = (None if a is None else torch.as_tensor(a, dtype=torch.long, device=dev) for a in random_data(case))
    if case["kind"] == "gen":
        model.eval()
        mask = torch.ones_like(x)

        def run():
            with torch.no_grad():
                out = model.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=case["new"],
                                     min_new_tokens=case["new"], use_cache=True, pad_token_id=0, eos_token_id=None)
            sync()
            assert tuple(out.shape) == (case["batch"], case["prompt"] + case["new"]), out.shape
        return run
    model.train()
    named = list(model.named_parameters())  # the tied head appears once, as wte
    groups = [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": WD},
              {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)

    def run():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=x, use_cache=False).logits  # (B, T, V) float32
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        sync()
    return run


RUNNERS = {"jaxgpt": jax_runner, "torch": torch_runner}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_peak(tiny: bool) -> tuple[float, str]:
    jax = setup_jax()
    n = 256 if tiny else 2048 if jax.default_backend() == "cpu" else 8192
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jax.numpy.float32) for i in (1, 2))
    f = jax.jit(functools.partial(jax.numpy.matmul, precision=jax.lax.Precision.HIGHEST))
    f(a, b).block_until_ready()
    s = statistics.median(timed(lambda: f(a, b).block_until_ready()) for _ in range(7))
    return 2 * n**3 / s, f"jax jit f32 matmul {n}x{n} (HIGHEST precision), median of 7"


def child(side: str, case: dict, threads: int) -> None:
    """Case 5 in a fresh process: first call (with compilation), a second call, peak RSS; one JSON line."""
    run = RUNNERS[side](case, threads)
    first, second = timed(run), timed(run)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    result = {"first_step_s": first, "second_step_s": second, "ru_maxrss_mb": maxrss, "peak_rss_mb": maxrss}
    status = Path("/proc/self/status")
    if status.exists():  # Linux: ru_maxrss survives exec (it starts at the parent's peak); VmHWM does not
        hwm = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
        result["peak_rss_mb"] = int(hwm[0]) / 2**10 if hwm else maxrss
    if side == "jaxgpt" and setup_jax().default_backend() != "cpu":
        result["device_peak_mb"] = setup_jax().devices()[0].memory_stats().get("peak_bytes_in_use", 0) / 2**20
    elif side == "torch" and __import__("torch").cuda.is_available():
        result["device_peak_mb"] = __import__("torch").cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def _command(args, *extra: str) -> tuple[list[str], dict]:
    """This script run again as a helper process: its command line and environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}  # compile for real
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return [sys.executable, __file__, *extra, "--threads", str(args.threads)] + ["--tiny"] * args.tiny, env


def run_child(side: str, args) -> dict:
    cmd, env = _command(args, "--child", side)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode:
        raise SystemExit(f"case 5 ({side}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def worker(side: str, case: dict, args) -> None:
    """One side of cases 1-4 in a process of its own: build, warm up, say "ready", then answer each line
    on stdin with the seconds of one timed call."""
    run = RUNNERS[side](case, args.threads)
    for _ in range(args.warmup):
        run()
    print("ready", flush=True)
    for _ in sys.stdin:
        print(f"time {timed(run)!r}", flush=True)


class Worker:
    """The parent's handle on a worker process."""

    def __init__(self, side: str, key: int, args):
        cmd, env = _command(args, "--worker", side, "--case", str(key), "--warmup", str(args.warmup))
        self.side, self.proc = side, subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                                      env=env)
        self._answer("ready")

    def _answer(self, prefix: str) -> str:
        for line in self.proc.stdout:  # anything else a library prints on stdout is skipped
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise SystemExit(f"the {self.side} worker exited with status {self.proc.wait()}")

    def timed_call(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return float(self._answer("time "))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def bench(key: int, case: dict, args, peak: float) -> dict:
    """Warm both sides up, each in its own process, then time alternating calls; medians, tokens/s, MFU, ratio."""
    workers = {side: Worker(side, key, args) for side in RUNNERS}  # built one after the other
    times = {side: [] for side in workers}
    for i in range(args.repeats):
        for side in (("jaxgpt", "torch") if i % 2 == 0 else ("torch", "jaxgpt")):
            time.sleep(args.pause)  # the other side's worker threads stop spinning before the clock starts
            times[side].append(workers[side].timed_call())
    for w in workers.values():
        w.close()
    out = {"name": case["name"], "tokens_per_call": tokens(case), "flops_per_token": flops_per_token(case)}
    for side, ts in times.items():
        med = statistics.median(ts)
        tps = tokens(case) / med
        out[side] = {"median_s": med, "times_s": ts, "tokens_per_s": tps, "mfu": tps * flops_per_token(case) / peak}
    out["ratio"] = out["jaxgpt"]["tokens_per_s"] / out["torch"]["tokens_per_s"]
    return out


def environment(args, peak: float, peak_how: str) -> dict:
    jax = setup_jax()
    import torch

    torch.set_num_threads(args.threads)
    d = jax.devices()[0]
    cpu = f"cpu ({platform.processor() or platform.machine()})"
    tdev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version(), "jax": jax.__version__,
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "jax_device": f"{d.platform} {d.device_kind} x{jax.device_count()}", "torch_device": tdev,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "xla_threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average": list(os.getloadavg()), "repeats": args.repeats, "warmup": args.warmup,
            "tiny": args.tiny, "peak_flops": peak, "peak_method": peak_how}


def table(env: dict, results: dict) -> str:
    lines = [f"jaxgpt on {env['jax_device']} (jax {env['jax']}, XLA CPU pool: all {env['xla_threads']} CPUs of the "
             f"process); torch {env['torch']} on {env['torch_device']} ({env['torch_threads']} threads), transformers "
             f"{env['transformers']}; {env['date']}; load average {env['load_average'][0]:.2f}",
             f"peak {env['peak_flops'] / 1e9:,.1f} GFLOP/s: {env['peak_method']}; median of {env['repeats']} "
             f"alternating repeats after {env['warmup']} warm-up", "",
             "| case | jaxgpt median | torch median | jaxgpt tok/s | torch tok/s | jaxgpt/torch | jaxgpt MFU "
             "| torch MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        j, t = r["jaxgpt"], r["torch"]
        if key == "5":
            lines.append(f"| {r['rows'][0]} | {j['first_step_s']:.2f} s (2nd {j['second_step_s']:.3f} s) | "
                         f"{t['first_step_s']:.2f} s (2nd {t['second_step_s']:.3f} s) | | | "
                         f"{r['ratio_first_step']:.2f} (time) | | |")
            lines.append(f"| {r['rows'][1]} | {j['peak_rss_mb']:,.0f} MB | {t['peak_rss_mb']:,.0f} MB | | | "
                         f"{r['ratio_rss']:.2f} (memory) | | |")
            if "device_peak_mb" in j and "device_peak_mb" in t:
                lines.append(f"| 5c peak device memory | {j['device_peak_mb']:,.0f} MB | {t['device_peak_mb']:,.0f} MB "
                             f"| | | {j['device_peak_mb'] / t['device_peak_mb']:.2f} (memory) | | |")
            continue
        lines.append(f"| {r['name']} | {j['median_s'] * 1e3:,.1f} ms | {t['median_s'] * 1e3:,.1f} ms | "
                     f"{j['tokens_per_s']:,.0f} | {t['tokens_per_s']:,.0f} | {r['ratio']:.2f} | "
                     f"{j['mfu']:.1%} | {t['mfu']:.1%} |")
    lines.append("\njaxgpt/torch: tokens/s ratio (> 1: jaxgpt faster); case 5: time and memory ratios (> 1: jaxgpt "
                 "slower / larger). Case 5 runs each side once, in a fresh process.")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 5; 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cases", default="1,2,3,4,5")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, to check that the suite runs")
    p.add_argument("--json", default="out/bench_suite.json", help="where the results go (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--pause", type=float, default=1.0,
                   help="seconds of idle before each timed call (default 1), so neither side runs while the "
                        "other's thread pool is still spinning")
    p.add_argument("--child", choices=list(RUNNERS), help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=list(RUNNERS), help=argparse.SUPPRESS)
    p.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.tiny else 5)
    if args.warmup < 1:
        p.error("--warmup must be at least 1: jaxgpt compiles on its first call")
    if hasattr(os, "sched_setaffinity") and args.threads < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])  # before XLA starts its pool
    cases = make_cases(args.tiny)
    if args.child:
        return child(args.child, cases[5], args.threads)
    if args.worker:
        return worker(args.worker, cases[args.case], args)

    if Path(args.json).exists() and not args.overwrite:  # refused before any work, never replaced silently
        p.error(f"{args.json} already exists; choose another --json or pass --overwrite")
    peak, peak_how = measure_peak(args.tiny)
    env = environment(args, peak, peak_how)
    results = {}
    for key in sorted({int(c) for c in args.cases.split(",")}):
        case = cases[key]
        print(f"running {case['name']} ...", file=sys.stderr, flush=True)
        if case["kind"] == "first":
            j, t = run_child("jaxgpt", args), run_child("torch", args)
            results["5"] = {"name": case["name"], "rows": case["rows"], "jaxgpt": j, "torch": t,
                            "ratio_first_step": j["first_step_s"] / t["first_step_s"],
                            "ratio_rss": j["peak_rss_mb"] / t["peak_rss_mb"]}
        else:
            results[str(key)] = bench(key, case, args, peak)
    print(table(env, results))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"environment": env, "cases": results}, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
