"""LoRA: low-rank adapters for the Dense kernels of GPT, written functionally over the params pytree.

A targeted Dense with kernel W (in, out) computes `x @ W + scale * (x @ a) @ b` with `a` (in, rank) and
`b` (rank, out) and `scale = alpha / rank`, as in the LoRA paper and PEFT. The adapters are a separate
pytree, nested like the params (`{"h_0": {"attn": {"c_attn": {"a": ..., "b": ...}}}, ...}`), so training
them is `jax.grad` with respect to that tree alone while the base params stay untouched.

`apply` runs the model with the low-rank term added on the fly (gradients reach only `a` and `b`, nothing
(in, out)-sized is formed); `merge` folds the adapters into the kernels for export or fast inference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxgpt.errors import UserError

Params = Mapping[str, Any]
Path = tuple[str, ...]


@dataclass(frozen=True)
class LoraConfig:
    """Which Dense modules get adapters, and their rank and strength."""

    rank: int = 8
    alpha: float = 16.0  # the update is (alpha / rank) * a @ b
    # A Dense module is adapted when its dotted path inside GPT (e.g. "h_3.attn.c_attn") ends with a target.
    targets: tuple[str, ...] = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _kernels(params: Params) -> dict[Path, jax.Array]:
    """Every Dense kernel of the tree, by its module path (e.g. ("h_0", "attn", "c_attn"))."""
    flat = traverse_util.flatten_dict(params)
    return {path[:-1]: x for path, x in flat.items() if path[-1] == "kernel" and x.ndim == 2}


def _matches(path: Path, target: str) -> bool:
    dotted = ".".join(path)
    return dotted == target or dotted.endswith("." + target)


def _adapted(adapters: Params) -> dict[Path, dict[str, jax.Array]]:
    """Module path -> {"a", "b"} for every adapter in the nested tree."""
    flat = traverse_util.flatten_dict(adapters)
    out: dict[Path, dict[str, jax.Array]] = {}
    for path, x in flat.items():
        out.setdefault(path[:-1], {})[path[-1]] = x
    return out


def init_adapters(params: Params, cfg: LoraConfig, key: jax.Array) -> dict:
    """Adapters for every targeted Dense kernel of a GPT params tree, nested like params.

    `a` (in, rank) is uniform in +-1/sqrt(in) (PEFT's kaiming-uniform default for lora_A); `b` (rank, out)
    is zeros, so the adapted model starts exactly equal to the base model. Both are float32 whatever the
    params' dtype.
    """
    if cfg.rank < 1:
        raise UserError(f"LoRA rank must be at least 1, got {cfg.rank}")
    if not cfg.alpha > 0:
        raise UserError(f"LoRA alpha must be positive, got {cfg.alpha}")
    kernels = _kernels(params)
    chosen = sorted(p for p in kernels if any(_matches(p, t) for t in cfg.targets))
    if not chosen:
        # Drop the block prefix ("h_3.") so the list names each kind of module once.
        suffixes = sorted({".".join(p[1:] if len(p) > 1 else p) for p in kernels})
        raise UserError(f"LoRA targets {', '.join(map(repr, cfg.targets)) or '()'} match no Dense module; "
                        f"valid targets end a module path, e.g. {', '.join(suffixes)}")
    flat = {}
    for path, k in zip(chosen, jax.random.split(key, len(chosen))):
        n_in, n_out = kernels[path].shape
        bound = 1.0 / math.sqrt(n_in)
        flat[path + ("a",)] = jax.random.uniform(k, (n_in, cfg.rank), jnp.float32, -bound, bound)  # (in, r)
        flat[path + ("b",)] = jnp.zeros((cfg.rank, n_out), jnp.float32)  # (r, out)
    return traverse_util.unflatten_dict(flat)


def merge(params: Params, adapters: Params, cfg: LoraConfig) -> dict:
    """New params with kernel + scale * a @ b for every adapted kernel (summed in float32, stored in the
    kernel's dtype); every other leaf is the same array as in `params`."""
    adapted = _adapted(adapters)
    unknown = sorted(".".join(p) for p in set(adapted) - set(_kernels(params)))
    if unknown:
        raise UserError(f"LoRA adapters for {', '.join(unknown)} match no Dense kernel of these params; "
                        "were they made for another model?")

    def walk(node: Params, path: Path) -> dict:
        out = {name: walk(child, path + (name,)) if isinstance(child, Mapping) else child
               for name, child in node.items()}
        if path in adapted:
            ab, kernel = adapted[path], out["kernel"]  # kernel (in, out)
            delta = cfg.scale * (ab["a"] @ ab["b"])  # (in, r) @ (r, out) -> (in, out) float32
            out["kernel"] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
        return out

    return walk(params, ())


def apply(model: nn.Module, params: Params, adapters: Params, cfg: LoraConfig, *args: Any,
          method: Any = None, **kwargs: Any) -> Any:
    """`model.apply({"params": params}, *args, method=method, **kwargs)` with every adapted Dense computing
    dense(x) + scale * (x @ a) @ b, the merged kernel never formed.

    An interceptor recognises `nn.Dense.__call__` of a module whose path (relative to `model`, the root of
    this apply) has adapters, and adds the low-rank term in the Dense's output (compute) dtype.
    """
    adapted = _adapted(adapters)

    def interceptor(next_fun, call_args, call_kwargs, context):
        y = next_fun(*call_args, **call_kwargs)
        module = context.module
        if not (isinstance(module, nn.Dense) and context.method_name == "__call__" and module.path in adapted):
            return y
        ab = adapted[module.path]
        x = call_args[0] if call_args else call_kwargs["inputs"]  # (..., in)
        a, b = ab["a"].astype(y.dtype), ab["b"].astype(y.dtype)
        low = jnp.dot(jnp.dot(x.astype(y.dtype), a), b)  # (..., r) -> (..., out)
        return y + cfg.scale * low

    with nn.intercept_methods(interceptor):
        return model.apply({"params": params}, *args, method=method, **kwargs)


def adapter_axes(kernel_axes: dict[Path, tuple], adapters: Params, prefix: Path = ()) -> dict[Path, tuple]:
    """Logical sharding axes of the adapters, following their base weights: `a` (in, rank) takes the
    kernel's input axis and `b` (rank, out) its output axis, so an adapter is split like its kernel.

    Args: kernel_axes, parameter path -> axes (`train.sharding.param_axes`); adapters; prefix, where the adapters
        sit in the tree being laid out. Returns: full adapter path -> axes.
    """
    out = {}
    for path in _adapted(adapters):
        names = kernel_axes.get(path + ("kernel",), (None, None))
        out[prefix + path + ("a",)] = (names[0], None)
        out[prefix + path + ("b",)] = (None, names[1])
    return out


def count(adapters: Params) -> int:
    """Number of adapter parameters."""
    return sum(x.size for x in jax.tree.leaves(adapters))
