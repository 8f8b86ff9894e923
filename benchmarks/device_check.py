"""The device check: one command that a GPU or TPU machine runs in under 10 minutes, printing one table.

    python benchmarks/device_check.py              # GPT-2 124M at context 1024, bfloat16
    python benchmarks/device_check.py --tiny       # a stand-in model: checks the script itself (CPU, CI)

Rows:
1. attention: cuDNN's fused attention against XLA's (where cuDNN runs): the logits' and loss's largest
   differences on one batch, and each one's train-step time;
2. remat none / dots / full: train-step tokens/s and MFU at the largest batch (of those tried) that fits;
3. cached greedy decoding, tokens/s at batch 1 and 8 (16 prompt tokens, 128 new);
4. FSDP over every local device (`mesh.fsdp=-1`): train-step tokens/s and MFU;
5. plan against measurement: `jaxgpt plan`'s prediction for this device (compiled in a CPU-only subprocess,
   as on a machine without it) beside the measured peak memory, step time and attention kernel.
Every step is the training engine's own (`Engine.train_step`: sharded, jitted, donated); times are the
median of --repeats timed steps after a compiling one. MFU is against `jaxgpt.report.progress.peak_flops`.
"""

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxgpt.model import objectives
from jaxgpt.config import Config, MeshConfig, ModelConfig, TrainConfig  # noqa: E402
from jaxgpt.train.engine import Engine
from jaxgpt.errors import UserError  # noqa: E402
from jaxgpt.model.gpt import GPT, for_backend
from jaxgpt.report.progress import flops_per_token, peak_flops
from jaxgpt.model.sampling import generate


def _oom(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "Out of memory" in text


def step_time(model_cfg: ModelConfig, batch: int, repeats: int, mesh: MeshConfig = MeshConfig()):
    """(seconds per step, tokens/s, MFU, the engine) of the train step, or None when it does not fit."""
    model = GPT(for_backend(model_cfg, batch))
    cfg = Config(model=model_cfg, train=TrainConfig(batch_size=batch, warmup_steps=0), mesh=mesh)
    try:
        engine = Engine(cfg, model, objectives.language_model(model))
        state, frozen = engine.start()
        rng = np.random.default_rng(0)
        windows = rng.integers(0, model_cfg.vocab_size, (1, batch, model_cfg.block_size + 1)).astype(np.int32)
        placed = engine.put((windows,))
        state, m = engine.train_step(state, placed, frozen)  # compiles
        jax.block_until_ready(m)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, m = engine.train_step(state, placed, frozen)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    except Exception as e:
        if _oom(e):
            return None
        raise
    sec = statistics.median(times)
    tps = batch * model_cfg.block_size / sec
    peak = peak_flops()
    mfu = tps * flops_per_token(model_cfg, engine.n_params) / peak if peak else float("nan")
    return sec, tps, mfu, engine


def attention_rows(cfg: ModelConfig, batch: int, repeats: int) -> list[str]:
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (batch, cfg.block_size + 1)).astype(np.int32)
    out, results = [], {}
    for how in ("xla", "cudnn"):
        try:
            resolved = for_backend(dataclasses.replace(cfg, attention=how), batch)
        except UserError as e:
            out.append(f"| attention {how} | not available here: {str(e).split(';')[0]} | | |")
            continue
        model = GPT(resolved)
        from jaxgpt.model.gpt import init_params

        params = init_params(cfg, jax.random.key(0))
        logits = np.asarray(jax.jit(model.apply)({"params": params}, tokens[:, :-1]), np.float32)
        value = float(jax.jit(lambda p: objectives.mean_loss(model, p, tokens[:, :-1], tokens[:, 1:]))(params))
        r = step_time(resolved, batch, repeats)
        results[how] = (logits, value)
        timing = f"{1e3 * r[0]:.1f} ms/step, {r[1]:,.0f} tok/s, MFU {r[2]:.1%}" if r else "out of memory"
        out.append(f"| attention {how}, batch {batch} x {cfg.block_size} | {timing} | loss {value:.5f} | |")
    if len(results) == 2:
        (lx, vx), (lc, vc) = results["xla"], results["cudnn"]
        out.append(f"| cuDNN vs XLA | max abs logit diff {np.abs(lx - lc).max():.3g} | loss diff {abs(vx - vc):.3g} | |")
    return out


PLAN_TARGETS = (("h200", "h200"), ("h100", "h100"), ("a100", "a100-40g"), ("l4", "l4"), ("rtx 4090", "rtx4090"),
                ("tpu v5 lite", "v5e-1"), ("tpu v6 lite", "v6e-1"))


def plan_target(kind: str) -> str | None:
    """The `jaxgpt plan` target of one device of this kind, if it has one."""
    kind = kind.lower()
    if "a100" in kind and "80" in kind:
        return "a100-80g"
    return next((t for key, t in PLAN_TARGETS if key in kind), None)


def plan_prediction(cfg: ModelConfig, batch: int, target: str) -> dict:
    """`jaxgpt plan`'s plan of the train step `step_time` runs, from a subprocess that sees only the CPU."""
    import json
    import os
    import subprocess

    run = Config(model=cfg, train=TrainConfig(batch_size=batch, warmup_steps=0))
    code = ("import json, sys; from jaxgpt.config import Config; from jaxgpt.plan import report, targets; "
            "from jaxgpt.plan.step import Job; cfg = Config.from_dict(json.loads(sys.argv[1])); "
            "print(json.dumps(report.make_plan(Job(cfg), targets.get(sys.argv[2]), search=False, say=lambda s: None)))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(run.to_dict()), target], capture_output=True,
                         text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                         cwd=Path(__file__).resolve().parent.parent)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "plan failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan_rows(cfg: ModelConfig, batch: int, repeats: int) -> list[str]:
    device = jax.devices()[0]
    target = plan_target(device.device_kind)
    if target is None or len(jax.devices()) != 1:
        return [f"| plan vs measured | no single-device plan target for {len(jax.devices())} x {device.device_kind} | | |"]
    try:
        plan = plan_prediction(cfg, batch, target)
    except RuntimeError as e:
        return [f"| plan vs measured | the plan failed: {e} | | |"]
    r = step_time(cfg, batch, repeats)
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    s, roof = plan["step"], plan["roofline"]
    measured = f"{peak / 2**30:.2f} GiB peak in use" if peak else "no memory statistics"
    timing = f"{1e3 * r[0]:.1f} ms measured" if r else "out of memory"
    return [f"| plan ({target}) vs measured, batch {batch} x {cfg.block_size} | predicted {s['total_gib']:.2f} GiB, "
            f"{measured} | roofline {1e3 * roof['step_s']:.1f} ms, {timing} | attention predicted {s['attention']}, "
            f"here {for_backend(cfg, batch).attention} |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a stand-in model (the script, not the device)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes to try for the remat rows")
    args = ap.parse_args()
    on_cpu = jax.default_backend() == "cpu"
    dtype = "float32" if on_cpu else "bfloat16"
    if args.tiny:
        cfg = ModelConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64, dtype=dtype)
        batches, new, attn_batch = args.batches or [4, 8], 8, 4
    else:
        cfg = ModelConfig.preset("gpt2", block_size=1024, dtype=dtype)
        batches, new, attn_batch = args.batches or [8, 16, 32, 64], 128, 8
    devices = jax.devices()
    print(f"device: {devices[0].device_kind} x {len(devices)} ({jax.default_backend()}); jax {jax.__version__}; "
          f"model {cfg.n_layer} layers, width {cfg.n_embd}, context {cfg.block_size}, compute {dtype}\n")
    print("| check | result | detail | |\n|---|---|---|---|")
    for row in plan_rows(cfg, attn_batch, args.repeats):  # first, so the device's peak memory is this step's
        print(row, flush=True)
    for row in attention_rows(cfg, attn_batch, args.repeats):
        print(row, flush=True)
    for remat in ("none", "dots", "full"):
        best = None
        for b in batches:
            r = step_time(dataclasses.replace(cfg, remat=remat), b, args.repeats)
            if r is None:
                break
            best = (b, r)
        if best:
            b, (sec, tps, mfu, _) = best
            print(f"| remat {remat}, largest batch tried that fits: {b} x {cfg.block_size} | {tps:,.0f} tok/s | "
                  f"MFU {mfu:.1%} | {1e3 * sec:.1f} ms/step |", flush=True)
        else:
            print(f"| remat {remat} | even batch {batches[0]} does not fit | | |", flush=True)
    from jaxgpt.model.gpt import init_params

    params = init_params(cfg, jax.random.key(0))
    for b in (1, 8):
        prompt = np.random.default_rng(2).integers(0, cfg.vocab_size, (b, 16))
        run = lambda: generate(GPT(cfg), params, prompt, new, temperature=0.0)  # noqa: E731
        run()  # compiles
        times = []
        for _ in range(max(args.repeats // 2, 1)):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        print(f"| cached greedy decoding, batch {b} | {b * new / statistics.median(times):,.0f} tok/s | 16 + {new} "
              "tokens | |", flush=True)
    fsdp = step_time(cfg, max(batches[0], len(devices)), args.repeats, MeshConfig(data=1, fsdp=-1))
    if fsdp:
        sec, tps, mfu, engine = fsdp
        print(f"| FSDP over {len(devices)} device(s), batch {max(batches[0], len(devices))} | {tps:,.0f} tok/s | "
              f"MFU {mfu:.1%} | mesh {dict(engine.mesh.shape)} |", flush=True)
    else:
        print("| FSDP | does not fit | | |")


if __name__ == "__main__":
    main()
