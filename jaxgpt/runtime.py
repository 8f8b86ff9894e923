"""The process a run lives in: `start` is the one setup every run and finetune makes before any work
(processes joined, the compilation cache, TensorBoard checked, a GPU JAX does not see); then several
processes as one run, with `jax.distributed` set up from the config or the environment.

Every process runs the same program on its own devices (multi-controller JAX): the same config, the same
compiled steps over global arrays, each process feeding only its own rows of each batch. Process 0 alone
writes logs, plots and samples; every process takes part in Orbax's checkpoints.

Where the settings come from, first found wins: `dist.*` in the config, then JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID, or with `dist.auto` JAX's own detection (Cloud TPU, SLURM, Open MPI,
Kubernetes). With none of them the run is one process and nothing is set up. `StopFlag` turns SIGTERM and
Ctrl-C into a request to stop at the next step boundary (the processes agree on the step, see train/engine.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxgpt.config import DistConfig
from jaxgpt.errors import UserError
from jaxgpt.report.board import Board


def _env_int(name: str, value: int, unset: int) -> int:
    if value != unset or name not in os.environ:
        return value
    try:
        return int(os.environ[name])
    except ValueError:
        raise UserError(f"environment variable {name}={os.environ[name]!r} is not a whole number") from None


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"dist.coordinator {address!r} must be host:port, e.g. 10.0.0.1:1234")
    return host.strip("[]"), int(port)


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
    """Return once something listens at host:port; a clear error after `timeout_s` seconds. (JAX itself
    would abort the process with a stack trace when the coordinator never answers.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UserError(f"cannot reach the coordinator {host}:{port} within {timeout_s:g} s "
                                f"({e.strerror or e}); start process 0 first, check dist.coordinator and the "
                                "firewall, or raise dist.timeout_s") from None
            time.sleep(0.5)


def _check_port_free(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", port))
    except OSError as e:
        raise UserError(f"process 0 cannot listen on port {port} for dist.coordinator ({e.strerror}); "
                        "choose another port") from None


def initialize(config: DistConfig) -> None:
    """Join the other processes of this run, if there are any; a no-op for a single process or when
    jax.distributed is already initialised. Must run before anything touches a device."""
    if jax.distributed.is_initialized():
        return
    address = config.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    n = _env_int("JAX_NUM_PROCESSES", config.num_processes, 0)
    pid = _env_int("JAX_PROCESS_ID", config.process_id, -1)
    if config.auto:
        try:
            jax.distributed.initialize(coordinator_address=address or None, num_processes=n or None,
                                       process_id=None if pid < 0 else pid,
                                       initialization_timeout=config.timeout_s)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"dist.auto could not set up the processes ({str(e).splitlines()[0]}); "
                            "set dist.coordinator, dist.num_processes and dist.process_id instead") from None
        return
    if not address and n <= 1:
        return  # one process
    if not address or n < 1 or pid < 0:
        raise UserError("a multi-process run needs dist.coordinator (host:port of process 0), "
                        f"dist.num_processes and dist.process_id; got {address or 'no coordinator'}, "
                        f"{n or 'no'} processes, process id {pid if pid >= 0 else 'unset'}")
    if pid >= n:
        raise UserError(f"dist.process_id ({pid}) must be below dist.num_processes ({n})")
    host, port = _split_address(address)
    if pid == 0:
        _check_port_free(host, port)
    else:
        _wait_for_coordinator(host, port, config.timeout_s)
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid,
                               initialization_timeout=config.timeout_s)


def is_primary() -> bool:
    """True in the one process that writes files and prints (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (immediate with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any of them (e.g. a stop signal that reached only some)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


class StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop at the next step boundary."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "jaxgpt" / "jax_compilation_cache")


def use_compile_cache(setting: str) -> str | None:
    """Turn on JAX's persistent compilation cache in `setting` ("auto": the user cache folder; "": off),
    unless the user set JAX_COMPILATION_CACHE_DIR themselves. Returns the folder in use."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if not setting:
        return None
    folder = Path(default_cache_dir() if setting == "auto" else setting).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the compilation cache {folder} ({e.strerror or e}); set "
                        "train.compile_cache to a writable folder, or to '' to turn it off") from None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)  # the steps, not every small jit
    return str(folder)


CUDA_LINE = 'pip install -e ".[cuda]"  (JAX with CUDA 12, for NVIDIA GPUs)'


def nvidia_present() -> bool:
    """Whether this machine has an NVIDIA GPU with its driver (whatever JAX sees)."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


def gpu_warning() -> str | None:
    """One line when an NVIDIA GPU is here but JAX runs on the CPU, else None."""
    if nvidia_present() and jax.default_backend() == "cpu":
        return ("warning: this machine has an NVIDIA GPU but JAX runs on the CPU (its CPU build is installed); "
                f"to train on the GPU: {CUDA_LINE}")
    return None


def print_warning() -> None:
    warning = gpu_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)


def start(dist: DistConfig, compile_cache: str, tensorboard: bool) -> None:
    """Everything a run sets up in its process before it touches a device: TensorBoard's package checked,
    the other processes joined, JAX's compilation cache turned on (before anything compiles), and a warning
    when an NVIDIA GPU is here but JAX runs on the CPU."""
    Board.check(tensorboard)
    initialize(dist)
    use_compile_cache(compile_cache)
    print_warning()
