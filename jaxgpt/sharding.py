"""The device mesh and the shardings of the train state and batches.

Training always runs on a mesh, even of one device, so the same compiled step serves a laptop CPU, one GPU
or every local accelerator: the batch is split along the `data` axis and the state is replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt.errors import UserError

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
    """A one-axis mesh over every device of this process: pure data parallelism."""
    # Auto axes: XLA propagates shardings through the model, so the math needs no annotations.
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Batches are (grad_accum, micro_batch, T): split micro_batch across the data axis."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def eval_batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Evaluation batches are (B, T): split B across the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch(mesh: jax.sharding.Mesh, micro_batch: int) -> None:
    n = mesh.shape[DATA_AXIS]
    if micro_batch % n:
        raise UserError(f"the micro-batch (train.batch_size / train.grad_accum = {micro_batch}) must be "
                        f"divisible by the {n} devices; change train.batch_size")


def put_batch(batch: tuple[np.ndarray, ...], sharding: NamedSharding) -> tuple[jax.Array, ...]:
    """Place host arrays on the mesh with the given sharding."""
    return tuple(jax.device_put(b, sharding) for b in batch)
