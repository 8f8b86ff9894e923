"""Train-step throughput of one model on 1, 2, 4 and 8 devices, data-parallel and fully sharded.

    python benchmarks/scaling.py                   # 8 fake CPU devices if no accelerators
    python benchmarks/scaling.py --layers 12 --width 768 --heads 12 --batch 16 --steps 10

On a CPU the devices are fake (XLA_FLAGS=--xla_force_host_platform_device_count=8, set here before JAX
starts): they share the same cores, so the figures prove that every mesh runs the same training, not that
it scales. On a multi-GPU host or a TPU VM the same script measures real scaling. Each row builds the
real Trainer (mesh, shardings, jitted step with donation) on the first n devices, runs --warmup steps
(compilation), then times --steps steps, synchronised at the end.
"""

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jaxgpt.config import Config, DataConfig, MeshConfig, ModelConfig, TrainConfig  # noqa: E402
from jaxgpt.train.pretrain import Trainer


def measure(cfg: Config, devices, warmup: int, steps: int) -> float:
    """Seconds per train step on `devices`."""
    trainer = Trainer(cfg, devices=devices)
    engine = trainer.engine
    state, frozen = engine.start()
    for i in range(warmup):
        state, metrics = engine.train_step(state, engine.put(trainer.task.batch(i)), frozen)
    jax.block_until_ready(metrics)
    batches = [engine.put(trainer.task.batch(warmup + i)) for i in range(steps)]  # read before the clock starts
    t0 = time.perf_counter()
    for batch in batches:
        state, metrics = engine.train_step(state, batch, frozen)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="global batch (sequences per step)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)

    available = jax.devices()
    counts = [n for n in (1, 2, 4, 8) if n <= len(available)]
    with tempfile.TemporaryDirectory() as tmp:
        base = Config(
            model=ModelConfig(block_size=args.context, n_layer=args.layers, n_head=args.heads, n_embd=args.width),
            data=DataConfig(source="shakespeare", tokenizer="char", cache_dir=str(Path(tmp) / "data")),
            train=TrainConfig(out_dir=str(Path(tmp) / "run"), batch_size=args.batch, progress=False),
        )
        print(f"{available[0].platform} x {len(available)} ({available[0].device_kind}); model {args.layers} layers, "
              f"width {args.width}, context {args.context}, global batch {args.batch}; "
              f"{args.steps} timed steps after {args.warmup}\n")
        print("| devices | mesh (data x fsdp x tensor) | ms/step | tokens/s |")
        print("|---:|---|---:|---:|")
        for n in counts:
            meshes = [MeshConfig(data=n)] + ([MeshConfig(data=1, fsdp=n)] if n > 1 else [])
            for mesh in meshes:
                cfg = dataclasses.replace(base, mesh=mesh)
                sec = measure(cfg, available[:n], args.warmup, args.steps)
                print(f"| {n} | {mesh.data} x {mesh.fsdp} x {mesh.tensor} | {1000 * sec:.1f} | "
                      f"{args.batch * args.context / sec:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
