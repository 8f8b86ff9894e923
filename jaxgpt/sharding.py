"""The device mesh, and how the train state and the batches are laid out on it.

Training always runs on a mesh, even of one device, so the same compiled step serves a laptop CPU, one GPU,
every accelerator of a host or a multi-host pod. The mesh has three named axes (`MeshConfig`):

- `data`: data parallelism; each group holds a whole copy of the weights.
- `fsdp`: fully-sharded data parallelism; weights, gradients and Adam's moments are split over it and
  gathered layer by layer when needed, so a model larger than one device's memory still trains.
- `tensor`: tensor parallelism; each layer's matmuls are split over it.

A batch is split over data x fsdp. Weights are sharded by *logical* axis names (vocab, embed, heads, mlp),
given below for each GPT-2 parameter and mapped onto mesh axes by `mesh.rules`; the model's code knows
nothing of this, and XLA's sharding propagation inserts the collectives. A dimension that its mesh axes do
not divide evenly stays whole.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt.config import MESH_AXES, MeshConfig, parse_rules
from jaxgpt.errors import UserError

BATCH_AXES = ("data", "fsdp")  # FSDP is data parallelism for activations: both split the batch

# Logical axes of every GPT-2 weight, keyed by the end of its path (Hugging Face names). The optimizer's
# moments have the same paths inside the state, so they are laid out like their weights.
PARAM_AXES: dict[tuple[str, ...], tuple[str | None, ...]] = {
    ("wte", "embedding"): ("vocab", "embed"),  # (V, C), also the tied output head
    ("wpe", "embedding"): (None, "embed"),  # (block_size, C)
    ("attn", "c_attn", "kernel"): ("embed", "heads"),  # (C, 3C): q, k, v of every head
    ("attn", "c_attn", "bias"): ("heads",),
    ("attn", "c_proj", "kernel"): ("heads", "embed"),  # (C, C)
    ("mlp", "c_fc", "kernel"): ("embed", "mlp"),  # (C, 4C)
    ("mlp", "c_fc", "bias"): ("mlp",),
    ("mlp", "c_proj", "kernel"): ("mlp", "embed"),  # (4C, C)
}  # LayerNorms and the remaining biases are small and stay replicated


def mesh_shape(config: MeshConfig, n_devices: int) -> tuple[int, ...]:
    """The (data, fsdp, tensor) sizes for `n_devices`, with a -1 replaced by what the others leave."""
    sizes = [getattr(config, a) for a in MESH_AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise UserError(f"the mesh axes set to {_describe(config)} need a multiple of {known} devices, but "
                            f"there are {n_devices}; change --mesh.fsdp / --mesh.tensor / --mesh.data")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise UserError(f"mesh {_describe(config)} has {math.prod(sizes)} devices but there are {n_devices}; "
                        "make mesh.data x mesh.fsdp x mesh.tensor equal the device count, or set one to -1")
    return tuple(sizes)


def _describe(config: MeshConfig) -> str:
    return " x ".join(f"{a}={getattr(config, a)}" for a in MESH_AXES)


def make_mesh(config: MeshConfig | None = None, devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(config or MeshConfig(), len(devices))
    # Auto axes: XLA propagates shardings through the model, so the math needs no annotations.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def logical_axes(path: tuple[str, ...]) -> tuple[str | None, ...] | None:
    """The logical axes of the weight at `path` (names from the root), or None if it has none."""
    for suffix, axes in PARAM_AXES.items():
        if path[-len(suffix):] == suffix:
            return axes
    return None


def spec_for(path: tuple[str, ...], shape: tuple[int, ...], mesh: jax.sharding.Mesh,
             rules: dict[str, str | None]) -> P:
    """The PartitionSpec of one array of the state: its logical axes through `rules`, keeping whole any
    dimension that its mesh axis does not divide (and any mesh axis of size 1)."""
    axes = logical_axes(path)
    if axes is None or len(axes) != len(shape):
        return P()
    spec, used = [], set()
    for dim, name in zip(shape, axes):
        axis = rules.get(name) if name else None
        size = mesh.shape[axis] if axis else 1
        if axis is None or axis in used or size == 1 or dim % size:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return P(*spec)


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh, rules: str) -> Any:
    """NamedShardings for every array of a (params, optimizer state, ...) pytree of shapes."""
    table = parse_rules(rules)

    def one(path, leaf):
        return NamedSharding(mesh, spec_for(_path_names(path), tuple(leaf.shape), mesh, table))

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Batches are (grad_accum, micro_batch, T): split micro_batch across the batch axes."""
    return NamedSharding(mesh, P(None, BATCH_AXES))


def eval_batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Evaluation batches are (B, T): split B across the batch axes."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_parallelism(mesh: jax.sharding.Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(mesh: jax.sharding.Mesh, micro_batch: int) -> None:
    n = batch_parallelism(mesh)
    if micro_batch % n:
        raise UserError(f"the micro-batch (train.batch_size / train.grad_accum = {micro_batch}) must be "
                        f"divisible by the {n} batch shards (mesh.data x mesh.fsdp); change train.batch_size")


def assemble(shape: tuple[int, ...], sharding: NamedSharding, read: Callable[[tuple], tuple[np.ndarray, ...]],
             count: int) -> tuple[jax.Array, ...]:
    """`count` global arrays of `shape` laid out by `sharding`, built from `read(index)`, which returns the
    host data of one index (a tuple of slices) for each of them. Only this process's devices are asked for,
    so each process reads only its own part; an index shared by several local devices is read once."""
    pieces: dict[str, tuple[np.ndarray, ...]] = {}

    def piece(i: int):
        def get(index):
            key = repr(index)
            if key not in pieces:
                pieces[key] = read(index)
            return pieces[key][i]
        return get

    return tuple(jax.make_array_from_callback(shape, sharding, piece(i)) for i in range(count))


def constrain_activations(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """`fn` with the residual stream (the token embeddings and each Block's output, (B, T, C)) split over
    the batch axes and whole in C. Left to itself, XLA's propagation carries the weights' layout into the
    activations (C split over fsdp, from the embedding table) and then gathers weights and activations
    back and forth, or replicates whole tensors; pinned, each FSDP layer is one all-gather of its weights.
    The model's code is unchanged: the constraint is applied by intercepting module calls while `fn` is
    traced."""
    import flax.linen as nn

    from jaxgpt.model import Block

    residual = NamedSharding(mesh, P(BATCH_AXES))

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        if isinstance(context.module, Block):
            x, cache = out
            return jax.lax.with_sharding_constraint(x, residual), cache
        if isinstance(context.module, nn.Embed) and out.ndim == 3:  # token embeddings (B, T, C)
            return jax.lax.with_sharding_constraint(out, residual)
        return out

    def wrapped(*args, **kwargs):
        with nn.intercept_methods(interceptor):
            return fn(*args, **kwargs)

    return wrapped
