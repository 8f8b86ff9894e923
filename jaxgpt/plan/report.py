"""A plan: the compiled step's needs on one target, with the estimates that follow from the target's specs.

`make_plan` runs the compilations (`step.compile_step`, and the micro-batch search) and adds what needs no
compiler: the model FLOPs of a step, a roofline step time and the tokens/s it bounds (from the target's
peak FLOP/s and memory bandwidth), and for decoding the KV cache's size and the bandwidth-bound tokens/s
at batch 1 and 8. `table` prints it; the same dict is the JSON.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxgpt.model.gpt import KVCache
from jaxgpt.plan.step import Fit, Job, compile_step, largest_micro_batch, usable_memory
from jaxgpt.plan.targets import GiB, Target
from jaxgpt.report.progress import flops_per_token

DECODE_BATCHES = (1, 8)


def _gib(n: float) -> float:
    return round(n / GiB, 3)


def tokens_per_step(job: Job, micro: int) -> int:
    """Tokens the model reads in one optimizer step (a DPO pair is two sequences)."""
    rows = micro * job.cfg.train.grad_accum * (2 if job.task == "dpo" else 1)
    return rows * job.cfg.model.block_size


def step_flops(job: Job, micro: int, n_params: int, n_trainable: int) -> float:
    """Model FLOPs of one step: 6 per weight and token when every weight trains (forward 2, backward 4), and
    2 less per frozen weight (no weight gradient), plus attention (`jaxgpt.report.progress.flops_per_token`)."""
    full = flops_per_token(job.cfg.model, n_params)
    frozen_share = 1 - min(n_trainable / max(n_params, 1), 1)
    return tokens_per_step(job, micro) * (full - 2 * frozen_share * n_params)


def roofline(job: Job, target: Target, fit: Fit, n_params: int, n_trainable: int) -> dict:
    """The step time that the target's peak FLOP/s and memory bandwidth bound from below, and the tokens/s
    (and model FLOPs) that bounds from above. The memory side counts reading every argument of the step
    once and writing the new state once: a lower bound on its traffic."""
    flops = step_flops(job, fit.micro, n_params, n_trainable)
    compute_s = flops / (target.n_devices * target.peak(job.cfg.model.dtype))
    memory_s = (fit.params + fit.opt_state + fit.frozen + fit.batch + fit.params + fit.opt_state) / target.bandwidth
    step_s = max(compute_s, memory_s)
    return {"model_flops_per_step": flops, "xla_flops_per_step_per_device": fit.xla_flops,
            "peak_flops_per_device": target.peak(job.cfg.model.dtype), "compute_bound_s": compute_s,
            "memory_bound_s": memory_s, "step_s": step_s, "bound": "compute" if compute_s >= memory_s else "memory",
            "tokens_per_s": tokens_per_step(job, fit.micro) / step_s}


def decoding(job: Job, target: Target, n_params: int) -> dict:
    """One device decoding with the KV cache at the full context: each new token reads every weight and the
    whole cache once, so memory bandwidth bounds tokens/s."""
    m = job.cfg.model
    weights = n_params * np.dtype(m.param_dtype).itemsize
    rows = {}
    for b in DECODE_BATCHES:
        cache = jax.eval_shape(lambda: KVCache.init(m, b, m.block_size))
        kv = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(cache))
        rows[str(b)] = {"kv_cache_gib": _gib(kv), "fits": weights + kv <= target.memory,
                        "tokens_per_s": b * target.bandwidth / (weights + kv)}
    return {"weights_gib": _gib(weights), "context": m.block_size, "batches": rows}


def _fit_dict(fit: Fit | None) -> dict | None:
    if fit is None:
        return None
    out = {"micro_batch": fit.micro, "fits": fit.fits, "compile_s": round(fit.seconds, 2)}
    for key in ("params", "opt_state", "frozen", "batch", "temporaries", "total", "usable"):
        out[f"{key}_gib"] = _gib(getattr(fit, key))
        out[f"{key}_bytes"] = getattr(fit, key)
    out.update(attention=fit.attention, kernels=fit.kernels, collectives=fit.collectives)
    if fit.refused:
        out["refused"] = fit.refused
    return out


def make_plan(job: Job, target: Target, *, search: bool = True, fraction: float | None = None,
              margin: float = 0.05, say=None) -> dict:
    """Compile the job's step on `target` at the recipe's micro-batch (and search the largest that fits)."""
    tc = job.cfg.train
    usable = usable_memory(target, fraction, margin)
    micro = tc.batch_size // tc.grad_accum
    known: dict[int, Fit] = {}
    fit = known[micro] = compile_step(job, target, micro, usable, say)
    best = nxt = None
    if search:
        best, nxt = largest_micro_batch(job, target, usable, known, say)
    n_params, n_trainable = fit.n_params, fit.n_trainable
    # What the program holds, from the recipe's own compilation unless the compiler refused it.
    shown = next((f for f in (fit, best, nxt) if f is not None and not f.refused), None)
    plan = {
        "target": {"name": target.name, "description": target.description, "devices": target.n_devices,
                   "hosts": target.hosts, "memory_gib": _gib(target.memory), "bandwidth_gb_s": target.bandwidth / 1e9,
                   "peak_tflops": target.peak(job.cfg.model.dtype) / 1e12, "source": target.source},
        "task": job.task, "trainable": job.parts.trainable, "params": n_params, "trainable_params": n_trainable,
        "model": {k: getattr(job.cfg.model, k) for k in ("n_layer", "n_head", "kv_heads", "head_dim", "n_embd",
                                                         "vocab_size", "block_size", "position", "norm", "mlp",
                                                         "dtype", "param_dtype", "remat")},
        "mesh": fit.mesh, "grad_accum": tc.grad_accum,
        "usable_gib": _gib(usable), "margin": margin,
        "step": _fit_dict(fit), "roofline": roofline(job, target, fit, n_params, n_trainable),
        "program": None if shown is None else {"micro_batch": shown.micro, "kernels": shown.kernels,
                                               "collectives": shown.collectives},
        "largest_fitting": _fit_dict(best), "next_size": _fit_dict(nxt), "searched": search,
        "compiles": len(known), "compile_s": round(sum(f.seconds for f in known.values()), 1),
        "decode": decoding(job, target, n_params),
    }
    return plan


def _collective_text(collectives: dict) -> str:
    if not collectives:
        return "none"
    return "; ".join(f"{k} x{v['count']} ({v['bytes'] / 2**20:,.1f} MiB)" for k, v in sorted(collectives.items()))


def table(plan: dict) -> str:
    """The plan as a two-column table for a terminal."""
    t, s, r = plan["target"], plan["step"], plan["roofline"]
    m = plan["model"]
    rows = [
        ("target", f"{t['name']}: {t['description']} ({t['memory_gib']:g} GiB, {t['bandwidth_gb_s']:,.0f} GB/s, "
                   f"{t['peak_tflops']:g} TFLOP/s each)"),
        ("job", f"{plan['task']} ({plan['trainable']}), {plan['params'] / 1e6:,.1f}M parameters "
                f"({plan['trainable_params'] / 1e6:,.1f}M trained), {m['n_layer']} layers, {m['n_head']} heads "
                f"({m['kv_heads']} key/value), {m['position']} positions, {m['mlp']}, context {m['block_size']}, "
                f"{m['dtype']} compute, remat {m['remat']}"),
        ("mesh", f"{plan['mesh']}, micro-batch {s['micro_batch']} x {m['block_size']} tokens, "
                 f"grad_accum {plan['grad_accum']}"),
        ("weights / device", f"{s['params_gib'] + s['frozen_gib']:.3f} GiB ({s['frozen_gib']:.3f} frozen)"),
        ("optimizer / device", f"{s['opt_state_gib']:.3f} GiB"),
        ("temporaries / device", f"{s['temporaries_gib']:.3f} GiB"),
        ("total / device", f"{s['total_gib']:.3f} GiB of {plan['usable_gib']:.3f} usable "
                           f"(margin {plan['margin']:.0%}): {'FITS' if s['fits'] else 'DOES NOT FIT'}"),
    ]
    if s.get("refused"):
        rows.append(("compiler said", s["refused"]))
    best, nxt = plan["largest_fitting"], plan["next_size"]
    if plan["searched"]:
        if best is None:
            text = f"none: micro-batch {nxt['micro_batch']} needs {nxt['total_gib']:.2f} GiB"
        else:
            text = (f"{best['micro_batch']} ({best['total_gib']:.2f} GiB)"
                    + (f"; {nxt['micro_batch']} needs {nxt['total_gib']:.2f} GiB" if nxt else "; the search limit"))
        rows.append(("largest micro-batch", text))
    prog = plan["program"] or {"micro_batch": s["micro_batch"], "kernels": {}, "collectives": {}}
    at = "" if prog["micro_batch"] == s["micro_batch"] else f" (at micro-batch {prog['micro_batch']})"
    kernels = ", ".join(f"{k} ({', '.join(v)})" for k, v in prog["kernels"].items()) or "XLA's own (no fused kernel)"
    rows += [
        ("attention", f"model.attention={s['attention']}; kernels{at}: {kernels}"),
        ("collectives / step", _collective_text(prog["collectives"]) + at),
        ("model FLOPs / step", f"{r['model_flops_per_step']:.3e}"
                               + (f" (XLA counts {r['xla_flops_per_step_per_device']:.3e} per device)"
                                  if r["xla_flops_per_step_per_device"] else "")),
        ("roofline step", f"{r['step_s'] * 1e3:,.1f} ms ({r['bound']}-bound): at most "
                          f"{r['tokens_per_s']:,.0f} tokens/s (100% MFU)"),
    ]
    d = plan["decode"]
    rows.append(("decode (1 device)", f"weights {d['weights_gib']:.3f} GiB; " + "; ".join(
        f"batch {b}: KV cache {v['kv_cache_gib']:.3f} GiB, at most {v['tokens_per_s']:,.0f} tokens/s"
        for b, v in d["batches"].items())))
    rows.append(("compiled", f"{plan['compiles']} times in {plan['compile_s']:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
