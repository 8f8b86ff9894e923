"""Which part of a model's parameters trains: the trainable tree, the frozen tree, and LoRA adapters.

A full parameter tree (a GPT's, or a GPTClassifier's {"gpt": ..., "head": ...}) is split by a predicate on
parameter paths into `trainable` and `frozen`. Gradients and optimizer state exist for the trainable part
only; with LoRA it holds the adapters under "lora" (nested like the weights they adapt, see lora.py) plus
any new head, and no GPT weight is copied into the optimizer. `apply` puts the parts back together for each
call; `merged` folds the adapters into the kernels, which is what a finished model is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flax import traverse_util

from jaxgpt.errors import UserError
from jaxgpt.model import lora as lora_lib

CHOICES = ("all", "head", "last_blocks", "lora")
ADAPTERS = "lora"  # the key of the adapters inside the trainable tree


@dataclass(frozen=True)
class Parts:
    """What trains: `all`, the classifier `head`, `last_blocks` (the head, an untied `lm_head`, the final norm
    and the last `last_blocks` blocks) or `lora` (adapters of rank/alpha `lora`, plus the head)."""

    trainable: str = "all"
    last_blocks: int = 1
    lora: lora_lib.LoraConfig | None = None

    def predicate(self, n_layer: int) -> Callable[[tuple[str, ...]], bool]:
        """Whether the parameter at a path of the full tree trains (LoRA adapters are added separately)."""
        if self.trainable not in CHOICES:
            raise UserError(f"trainable must be one of {', '.join(CHOICES)}, got {self.trainable!r}")
        if self.trainable == "last_blocks" and self.last_blocks > n_layer:
            raise UserError(f"--last-blocks={self.last_blocks} but the model has {n_layer} blocks")
        last = {f"h_{i}" for i in range(n_layer - self.last_blocks, n_layer)}

        def trains(path: tuple[str, ...]) -> bool:
            if path[0] == "head" or self.trainable == "all":
                return True
            gpt = path[1:] if path[0] == "gpt" else path  # a classifier nests the GPT under "gpt"
            return self.trainable == "last_blocks" and (gpt[0] in ("ln_f", "lm_head") or gpt[0] in last)

        return trains


def partition(tree: dict, predicate) -> tuple[dict, dict]:
    """(the leaves whose path satisfies `predicate`, the others), each nested as in `tree`."""
    flat = traverse_util.flatten_dict(tree)
    yes = {k: v for k, v in flat.items() if predicate(k)}
    no = {k: v for k, v in flat.items() if not predicate(k)}
    return traverse_util.unflatten_dict(yes), traverse_util.unflatten_dict(no)


def combine(a: dict, b: dict) -> dict:
    """One tree holding the leaves of both (the inverse of `partition`)."""
    if not b:
        return a
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(a), **traverse_util.flatten_dict(b)})


def apply(model, lora: lora_lib.LoraConfig | None, trainable: dict, frozen: dict, *args, method=None, **kwargs):
    """`model.apply` on the parts put back together, adding the adapters' low-rank terms if there are any."""
    full = combine(trainable, frozen)
    if ADAPTERS not in full:
        return model.apply({"params": full}, *args, method=method, **kwargs)
    rest = {k: v for k, v in full.items() if k != ADAPTERS}
    return lora_lib.apply(model, rest, full[ADAPTERS], lora, *args, method=method, **kwargs)


def merged(params: dict, lora: lora_lib.LoraConfig | None) -> dict:
    """The full tree (trainable and frozen combined) with any adapters merged into their kernels."""
    if ADAPTERS not in params:
        return params
    rest = {k: v for k, v in params.items() if k != ADAPTERS}
    return lora_lib.merge(rest, params[ADAPTERS], lora)
