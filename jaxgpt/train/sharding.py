"""The device mesh, and how the train state and the batches are laid out on it.

Training always runs on a mesh, even of one device, so the same compiled step serves a laptop CPU, one GPU,
every accelerator of a host or a multi-host pod. The mesh has three named axes (`MeshConfig`):

- `data`: data parallelism; each group holds a whole copy of the weights.
- `fsdp`: fully-sharded data parallelism; weights, gradients and Adam's moments are split over it and
  gathered layer by layer when needed, so a model larger than one device's memory still trains.
- `tensor`: tensor parallelism; each layer's matmuls are split over it.

A batch is split over data x fsdp. Each weight declares *logical* axes where the model creates it (vocab,
embed, heads, mlp; see jaxgpt/model/gpt.py); `mesh.rules` maps them onto mesh axes, and the residual stream's
`batch` axis goes to data x fsdp. XLA's sharding propagation inserts the collectives. A dimension that its
mesh axes do not divide evenly stays whole.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgpt.config import MESH_AXES, MeshConfig, parse_rules
from jaxgpt.errors import UserError

BATCH_AXES = ("data", "fsdp")  # FSDP is data parallelism for activations: both split the batch

Axes = dict[tuple[str, ...], tuple[str | None, ...]]  # parameter path -> one logical axis name per dimension


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


def param_axes(boxed: Any) -> Axes:
    """The logical axes every weight of a boxed parameter tree (`model.gpt.init_boxed`) declares, by path;
    weights that declare none (LayerNorms) are left out and stay replicated."""
    flat = traverse_util.flatten_dict(boxed, is_leaf=lambda _, x: isinstance(x, nn.LogicallyPartitioned))
    return {path: tuple(box.names) for path, box in flat.items() if isinstance(box, nn.LogicallyPartitioned)}


def axes_of(path: tuple[str, ...], axes: Axes) -> tuple[str | None, ...] | None:
    """The logical axes of the array at `path` in any tree that holds parameters: a parameter's own path,
    or one that ends with it (the optimizer's moments of that parameter inside a train state)."""
    for i in range(len(path)):
        if path[i:] in axes:
            return axes[path[i:]]
    return None


def spec_for(names: tuple[str | None, ...] | None, shape: tuple[int, ...], mesh: jax.sharding.Mesh,
             rules: dict[str, str | None]) -> P:
    """The PartitionSpec of one array with logical axes `names` through `rules`, keeping whole any
    dimension that its mesh axis does not divide (and any mesh axis of size 1)."""
    if names is None or len(names) != len(shape):
        return P()
    spec, used = [], set()
    for dim, name in zip(shape, names):
        axis = rules.get(name) if name else None
        size = mesh.shape[axis] if axis else 1
        if axis is None or axis in used or size == 1 or dim % size:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return P(*spec)


def tree_shardings(abstract: Any, axes: Axes, mesh: jax.sharding.Mesh, rules: str) -> Any:
    """NamedShardings for every array of a pytree of shapes (params, a train state, frozen weights)."""
    table = parse_rules(rules)

    def one(path, leaf):
        return NamedSharding(mesh, spec_for(axes_of(_path_names(path), axes), tuple(leaf.shape), mesh, table))

    return jax.tree_util.tree_map_with_path(one, abstract)


def activation_rules(mesh: jax.sharding.Mesh, rules: str) -> Callable[[Callable], Callable]:
    """A decorator: the function, while traced, sees `mesh` and the logical rules, so the model's
    `nn.with_logical_constraint`s pin its activations (the residual stream's `batch` over data x fsdp)."""
    pairs = (("batch", BATCH_AXES), *parse_rules(rules).items())

    def wrap(fn: Callable) -> Callable:
        def traced(*args, **kwargs):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(pairs):
                return fn(*args, **kwargs)
        return traced

    return wrap


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


def put_batch(arrays: tuple, sharding: NamedSharding) -> tuple[jax.Array, ...]:
    """Global arrays laid out by `sharding` from host arrays, or from anything with a `shape` whose
    `[index]` reads that part (a batch of windows left on disk). Only this process's devices are asked
    for, so each process reads only its own rows; a part shared by several local devices is read once."""
    def put(array):
        pieces: dict[str, np.ndarray] = {}

        def get(index):
            key = repr(index)
            if key not in pieces:
                pieces[key] = np.asarray(array[index])
            return pieces[key]

        return jax.make_array_from_callback(tuple(array.shape), sharding, get)

    return tuple(put(a) for a in arrays)
