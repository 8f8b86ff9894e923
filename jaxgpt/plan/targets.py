"""The accelerators `jaxgpt plan` compiles for, described from the vendors' published specifications.

A `Target` is a set of identical devices: per device its memory, memory bandwidth and dense peak FLOP/s,
and what XLA needs to compile for it without the hardware: for an NVIDIA GPU a target description (the
text form of XLA's GpuTargetConfigProto, written here from the data sheet: SM count, clock, caches,
compute capability) and a topology `<slices>x<hosts>x<devices per host>`; for a TPU the topology name
libtpu knows (`v5e:2x4`) and the chips per host. `devices(target)` asks the installed compile plugin for
the target's devices, on which `jax.jit(...).lower(...).compile()` then runs as it would on the machine.

Figures are per device as JAX sees it: one GPU, or one TPU chip (v5p's is a megacore chip). TPU v4 is left
out: libtpu's compile-only v4 topology presents each TensorCore as a device, which JAX's meshes refuse
(they want one device per chip).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import tempfile

from jaxgpt.errors import UserError

GiB = 1024**3
CUDA_INSTALL = 'pip install "jaxgpt[plan]"'  # brings both compile plugins (see pyproject.toml)


@dataclasses.dataclass(frozen=True)
class Gpu:
    """What XLA's GPU compiler reads about the chip (fields of its GpuDeviceInfoProto)."""

    model: str  # the device name CUDA reports
    sms: int  # streaming multiprocessors
    fp32_lanes_per_sm: int
    capability: tuple[int, int]  # CUDA compute capability
    clock_ghz: float  # boost clock
    l2_bytes: int
    smem_per_sm: int  # shared memory per SM, bytes
    smem_per_block_optin: int  # the most one block may opt into, bytes
    threads_per_sm: int


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "gpu" or "tpu": the backend the engine sees there
    description: str
    n_devices: int
    hosts: int
    memory: int  # bytes per device
    bandwidth: float  # memory bandwidth per device, bytes/s
    peak_16bit: float  # dense bfloat16 (and float16) matmul FLOP/s per device
    peak_32bit: float  # dense FLOP/s of a float32 matmul at JAX's default precision (TF32 on a GPU, bf16 passes on a TPU)
    source: str  # where the figures come from
    gpu: Gpu | None = None
    tpu_topology: str = ""  # libtpu's topology name
    chips_per_host: tuple[int, int, int] | None = None  # libtpu's chips_per_host_bounds, when not its default

    @property
    def platform(self) -> str:  # the PJRT plugin that compiles for it
        return "cuda" if self.kind == "gpu" else "tpu"

    def peak(self, dtype: str) -> float:
        return self.peak_16bit if dtype in ("bfloat16", "float16") else self.peak_32bit


# --- the chips --------------------------------------------------------------------------------------

_H100 = Gpu("NVIDIA H100 80GB HBM3", 132, 128, (9, 0), 1.98, 50 * 2**20, 228 * 1024, 227 * 1024, 2048)
_H200 = dataclasses.replace(_H100, model="NVIDIA H200")
_A100 = Gpu("NVIDIA A100-SXM4-40GB", 108, 64, (8, 0), 1.41, 40 * 2**20, 164 * 1024, 163 * 1024, 2048)
_L4 = Gpu("NVIDIA L4", 58, 128, (8, 9), 2.04, 48 * 2**20, 100 * 1024, 99 * 1024, 1536)
_RTX4090 = Gpu("NVIDIA GeForce RTX 4090", 128, 128, (8, 9), 2.52, 72 * 2**20, 100 * 1024, 99 * 1024, 1536)

_SRC_H100 = "NVIDIA H100 Tensor Core GPU data sheet (SXM5: 80 GB HBM3, 3.35 TB/s, 989 TFLOPS BF16 dense, 495 TF32 dense)"
_SRC_H200 = "NVIDIA H200 Tensor Core GPU product page (SXM: 141 GB HBM3e, 4.8 TB/s, 989 TFLOPS BF16 dense)"
_SRC_A100 = ("NVIDIA A100 Tensor Core GPU data sheet (SXM4: 40 GB HBM2 1,555 GB/s, 80 GB HBM2e 2,039 GB/s; "
             "312 TFLOPS BF16 dense, 156 TF32 dense)")
_SRC_L4 = "NVIDIA L4 Tensor Core GPU data sheet (24 GB GDDR6, 300 GB/s, 121 TFLOPS BF16 dense, 60 TF32 dense)"
_SRC_4090 = ("NVIDIA Ada Lovelace architecture white paper, GeForce RTX 4090 (24 GB GDDR6X, 1,008 GB/s, "
             "165 TFLOPS BF16 dense with FP32 accumulation, 83 TF32)")
_SRC_V5E = "Google Cloud TPU v5e documentation (per chip: 197 TFLOPS BF16, 16 GiB HBM2, 819 GB/s)"
_SRC_V5P = "Google Cloud TPU v5p documentation (per chip: 459 TFLOPS BF16, 95 GiB HBM2e, 2,765 GB/s)"
_SRC_V6E = "Google Cloud TPU v6e (Trillium) documentation (per chip: 918 TFLOPS BF16, 32 GiB HBM, 1,640 GB/s)"


def _gpus(name, chip, n, hosts, memory_gib, bandwidth, bf16, tf32, source, what):
    return Target(name, "gpu", f"{n} x {what}" + (f" on {hosts} hosts" if hosts > 1 else ""), n, hosts,
                  memory_gib * GiB, bandwidth, bf16, tf32, source, gpu=chip)


def _tpus(name, topology, n, hosts, memory_gib, bandwidth, bf16, source, what, chips_per_host=None):
    return Target(name, "tpu", f"{n} x {what}" + (f" on {hosts} hosts" if hosts > 1 else ""), n, hosts,
                  memory_gib * GiB, bandwidth, bf16, bf16, source, tpu_topology=topology,
                  chips_per_host=chips_per_host)


_A100_80 = dataclasses.replace(_A100, model="NVIDIA A100-SXM4-80GB")
TARGETS: dict[str, Target] = {t.name: t for t in [
    _gpus("h100", _H100, 1, 1, 80, 3.35e12, 989e12, 495e12, _SRC_H100, "H100 SXM 80 GB"),
    _gpus("h100x8", _H100, 8, 1, 80, 3.35e12, 989e12, 495e12, _SRC_H100, "H100 SXM 80 GB"),
    _gpus("h100x16", _H100, 16, 2, 80, 3.35e12, 989e12, 495e12, _SRC_H100, "H100 SXM 80 GB"),
    _gpus("h200", _H200, 1, 1, 141, 4.8e12, 989e12, 495e12, _SRC_H200, "H200 SXM 141 GB"),
    _gpus("h200x8", _H200, 8, 1, 141, 4.8e12, 989e12, 495e12, _SRC_H200, "H200 SXM 141 GB"),
    _gpus("a100-40g", _A100, 1, 1, 40, 1.555e12, 312e12, 156e12, _SRC_A100, "A100 SXM 40 GB"),
    _gpus("a100-80g", _A100_80, 1, 1, 80, 2.039e12, 312e12, 156e12, _SRC_A100, "A100 SXM 80 GB"),
    _gpus("a100x8", _A100_80, 8, 1, 80, 2.039e12, 312e12, 156e12, _SRC_A100, "A100 SXM 80 GB"),
    _gpus("l4", _L4, 1, 1, 24, 300e9, 121e12, 60e12, _SRC_L4, "L4 24 GB"),
    _gpus("rtx4090", _RTX4090, 1, 1, 24, 1008e9, 165e12, 83e12, _SRC_4090, "GeForce RTX 4090 24 GB"),
    _tpus("v5e-1", "v5e:1x1", 1, 1, 16, 819e9, 197e12, _SRC_V5E, "TPU v5e chip", (1, 1, 1)),
    _tpus("v5e-4", "v5e:2x2", 4, 1, 16, 819e9, 197e12, _SRC_V5E, "TPU v5e chip", (2, 2, 1)),
    _tpus("v5e-8", "v5e:2x4", 8, 1, 16, 819e9, 197e12, _SRC_V5E, "TPU v5e chip", (2, 4, 1)),
    _tpus("v5e-16", "v5e:4x4", 16, 4, 16, 819e9, 197e12, _SRC_V5E, "TPU v5e chip"),
    _tpus("v5p-8", "v5p:2x2x1", 4, 1, 95, 2765e9, 459e12, _SRC_V5P, "TPU v5p chip"),
    _tpus("v5p-64", "v5p:4x4x2", 32, 8, 95, 2765e9, 459e12, _SRC_V5P, "TPU v5p chip"),
    _tpus("v6e-1", "v6e:1x1", 1, 1, 32, 1640e9, 918e12, _SRC_V6E, "TPU v6e chip", (1, 1, 1)),
    _tpus("v6e-8", "v6e:2x4", 8, 1, 32, 1640e9, 918e12, _SRC_V6E, "TPU v6e chip", (2, 4, 1)),
]}


def get(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def gpu_target_text(t: Target) -> str:
    """The GpuTargetConfigProto text XLA's GPU compiler reads for `t` (what it would query from the device)."""
    g = t.gpu
    major, minor = g.capability
    return "\n".join([
        "gpu_device_info {",
        "  threads_per_block_limit: 1024", "  threads_per_warp: 32",
        "  shared_memory_per_block: 49152", f"  shared_memory_per_core: {g.smem_per_sm}",
        f"  threads_per_core_limit: {g.threads_per_sm}", f"  core_count: {g.sms}",
        f"  fpus_per_core: {g.fp32_lanes_per_sm}",
        "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535", "  block_dim_limit_z: 65535",
        f"  memory_bandwidth: {int(t.bandwidth)}", f"  l2_cache_size: {g.l2_bytes}",
        f"  clock_rate_ghz: {g.clock_ghz}", f"  device_memory_size: {t.memory}",
        f"  shared_memory_per_block_optin: {g.smem_per_block_optin}",
        f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
        "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536",
        "}",
        'platform_name: "CUDA"',
        "dnn_version_info { major: 9 minor: 8 patch: 0 }",  # the cuDNN that jax[cuda12] 0.10 installs, or newer
        f'device_description_str: "{g.model}"',
    ])


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def check_plugin(t: Target) -> None:
    """Refuse in one line when the compiler for `t` is not installed."""
    need = "jax-cuda12-plugin" if t.kind == "gpu" else "libtpu"
    if not _installed(need):
        what = "NVIDIA GPUs" if t.kind == "gpu" else "TPUs"
        raise UserError(f"planning for {what} needs the {need} compiler, which is not installed; run "
                        f"{CUDA_INSTALL} (both compilers, about 5 GB installed) and plan again")


@contextlib.contextmanager
def _stderr_to(file):
    """Send what C++ code writes to stderr into `file` (libtpu reports the TPU it cannot find there)."""
    saved = os.dup(2)
    try:
        os.dup2(file.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_TOPOLOGIES: dict[str, object] = {}


def devices(t: Target) -> list:
    """The target's devices, from the compile plugin (no hardware needed); the same objects every call."""
    if t.name not in _TOPOLOGIES:
        check_plugin(t)
        from jax.experimental import topologies

        if t.kind == "gpu":
            args = dict(target_config=gpu_target_text(t), topology=f"1x{t.hosts}x{t.n_devices // t.hosts}")
        else:
            args = {"chips_per_host_bounds": list(t.chips_per_host)} if t.chips_per_host else {}
            # Compiling touches no TPU, so another process (a second plan, a run on this TPU VM) may hold
            # libtpu's lock file at the same time.
            os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        with tempfile.TemporaryFile("w+") as log:
            try:
                with _stderr_to(log):
                    topology = topologies.get_topology_desc(
                        t.tpu_topology or t.name, t.platform, **args)
            except Exception as e:
                raise UserError(f"the {t.platform} compiler could not describe {t.name}: "
                                f"{str(e).splitlines()[0][:200]}; check that jax and its plugins have the "
                                f"same version ({CUDA_INSTALL})") from None
        _TOPOLOGIES[t.name] = topology
    found = list(_TOPOLOGIES[t.name].devices)
    assert len(found) == t.n_devices, (t.name, len(found))
    return found
