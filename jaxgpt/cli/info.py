"""`jaxgpt info`: what JAX sees on this machine, and the one line that fixes a GPU it does not see.

`pip install -e .` installs JAX's CPU build; on a machine with an NVIDIA GPU that trains on the CPU without
a word. `gpu_warning` notices the GPU (its driver's `nvidia-smi` or /proc/driver/nvidia) while JAX has
no GPU backend, and says which extra to install; `train.py` and the finetunes print it too.
"""

from __future__ import annotations

import importlib.metadata
import platform

from jaxgpt.runtime import gpu_warning

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tiktoken")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _memory(device) -> str:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # CPU devices and some plugins have none
        stats = {}
    limit = stats.get("bytes_limit")
    return f"{limit / 2**30:.1f} GiB" if limit else "host memory"


def report() -> str:
    """The backend, every device with its memory, the peak FLOP/s MFU assumes, and the versions."""
    import jax

    from jaxgpt.report.progress import peak_flops

    devices = jax.devices()
    lines = [f"backend: {jax.default_backend()} ({len(devices)} device{'s' * (len(devices) != 1)}, "
             f"{jax.process_count()} process{'es' * (jax.process_count() != 1)})"]
    lines += [f"  device {d.id}: {d.device_kind} ({d.platform}), memory {_memory(d)}" for d in devices]
    peak = peak_flops()
    how = "measured float32 matmul" if devices[0].platform == "cpu" else "the vendor's dense bf16 figure"
    lines.append(f"peak FLOP/s for MFU: {peak / 1e12:.2f} TFLOP/s ({how}, all local devices)" if peak else
                 "peak FLOP/s for MFU: unknown for this device (MFU is not shown)")
    lines.append("versions: " + ", ".join(f"{p} {_version(p)}" for p in PACKAGES) +
                 f", python {platform.python_version()}")
    warning = gpu_warning()
    if warning:
        lines.append(warning)
    return "\n".join(lines)


