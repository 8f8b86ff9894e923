"""Orbax checkpoints: a run directory's train states, params-only model directories, and reading the
parameters back (for `jaxgpt.store.loader.load`).

A run directory (rundir.py names its files) holds `checkpoints/<step>/` written by an Orbax
CheckpointManager: the TrainState (`state`) and a small JSON item (`meta`: tokens seen, validation loss). The latest `keep` checkpoints are kept, plus the best by
validation loss. Saves are asynchronous; `wait()` before exiting. A finetune also keeps the weights it
does not train once, in `frozen/` (`save_tree`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxgpt.config import Config
from jaxgpt.errors import UserError
from jaxgpt.store.rundir import CHECKPOINT_DIR, RunDir


def _manager(run_dir: Path, keep: int = 1, create: bool = True) -> ocp.CheckpointManager:
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(keep),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    # Readers pass create=False rather than use Orbax's read_only mode, which logs warnings on every open.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=create)
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINT_DIR, options=options,
                                 item_names=("state", "meta"))


class Checkpointer:
    """Saves and restores TrainStates in `<run_dir>/checkpoints`."""

    def __init__(self, run_dir: str | Path, keep: int):
        self.manager = _manager(Path(run_dir), keep)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict[str, Any], val_loss: float | None = None) -> None:
        """Start an asynchronous save of `state` and `meta` at `step` (no-op if that step exists)."""
        if step in self.manager.all_steps():
            return
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, abstract_state, step: int | None = None):
        """Restore (state, meta) at `step` (default: latest) into the structure and shardings given by
        `abstract_state` (a pytree of jax.ShapeDtypeStruct, e.g. from jax.eval_shape)."""
        step = self.manager.latest_step() if step is None else step
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        _silence_abandoned_reads()
        try:
            restored = self.manager.restore(step, args=args)
        except Exception:  # Orbax and TensorStore raise many types for damaged or mismatched files
            raise _damaged(step, Path(self.manager.directory)) from None
        return restored.state, restored.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()




def estimate_bytes(abstract_state) -> int:
    """Bytes one checkpoint of this state takes on disk (before compression)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))


def save_model(out_dir: str | Path, cfg: Config, params, tokenizer_meta: dict | None, meta: dict) -> None:
    """Write a params-only model directory (config.json, tokenizer.json, checkpoints/0) that `jaxgpt.store.loader.load`
    reads like a run directory; used for converted weights."""
    out_dir = Path(out_dir)
    manager = _manager(out_dir, keep=1)
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params}),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
    manager.close()
    RunDir(out_dir).write_header(cfg, tokenizer_meta)


def save_tree(folder: str | Path, tree) -> None:
    """Save a pytree of arrays once (a finetune's frozen weights), written whole or not at all."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(folder).absolute(), tree)
    checkpointer.wait_until_finished()
    checkpointer.close()


def restore_tree(folder: str | Path, abstract=None):
    """Restore what `save_tree` wrote into the structure and shardings of `abstract` (ShapeDtypeStructs),
    or, without it, as saved onto the first local device."""
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise UserError(f"{folder} is missing; the run cannot resume without the weights it keeps there: start "
                        "it again in a new output folder")
    checkpointer = ocp.StandardCheckpointer()
    _silence_abandoned_reads()
    try:
        if abstract is None:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            tree = ocp.PyTreeCheckpointHandler().metadata(folder).tree
            abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
        return checkpointer.restore(folder, abstract)
    except Exception:  # Orbax and TensorStore raise many types for damaged or mismatched files
        raise UserError(f"{folder} is damaged (a file is truncated or corrupt); start the run again in a new "
                        "output folder") from None
    finally:
        checkpointer.close()


def _closed_loop_report(unraisable) -> bool:
    return isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)


class _AbandonedReads(logging.Filter):
    """Drops asyncio's "Future (or Task) exception was never retrieved" records of TensorStore reads, and
    only those."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        first = record.getMessage().partition("\n")[0]  # the message, then the future's description
        return not (first.endswith("exception was never retrieved") and "tensorstore" in str(exc))


_silenced = False


def _silence_abandoned_reads() -> None:
    """Drop, for the rest of the process, the reports of the reads that a failed restore abandons; called
    before every restore, installed once.

    Orbax reads a checkpoint on an asyncio loop that it closes as soon as one read fails. TensorStore's other
    reads then complete into the closed loop, and each is reported after the one-line message: from a
    background thread as an unraisable 'Event loop is closed' error, or, when its future is garbage
    collected, by asyncio's logger as 'Future (or Task) exception was never retrieved'. They usually come within
    milliseconds, but on a loaded machine as late as the end of the process, so the filters stay. Nothing
    else is dropped: other unraisable errors and other futures' reports still print.
    """
    global _silenced
    if _silenced:
        return
    saved = sys.unraisablehook

    def hook(unraisable):
        if not _closed_loop_report(unraisable):
            saved(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_AbandonedReads())
    _silenced = True


def _damaged(step: int, folder: Path, steps: list[int] | None = None) -> UserError:
    """`steps`: the run's checkpoints, offered as --step choices (when reading for sampling)."""
    others = [s for s in steps or [] if s != step]
    hint = f"pass --step with one of {others}, or " if others else ""
    return UserError(f"checkpoint step {step} in {folder} is damaged (a file is truncated or corrupt); "
                     f"{hint}delete {folder / str(step)} to fall back to an earlier one")


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """The steps of a run directory's complete checkpoints ([] if it has none)."""
    if not (Path(run_dir) / CHECKPOINT_DIR).is_dir():
        return []
    manager = _manager(Path(run_dir), create=False)
    try:
        return list(manager.all_steps())
    finally:
        manager.close()


def restore_params(run_dir: str | Path, step: int, sharding=None) -> Any:
    """Only the `params` of the saved state at `step` (no optimizer state), whatever tree they form (read
    from the checkpoint's own metadata), placed on `sharding` (default: the first local device)."""
    run_dir = Path(run_dir)
    where = run_dir.absolute() / CHECKPOINT_DIR / str(step) / "state"
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    _silence_abandoned_reads()
    try:
        tree = ocp.PyTreeCheckpointHandler().metadata(where)["params"]
        item = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)}
        manager = _manager(run_dir, create=False)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=item, restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), item),
                partial_restore=True)))
        finally:
            manager.close()
    except Exception:  # Orbax and TensorStore raise many types for damaged files
        raise _damaged(step, run_dir / CHECKPOINT_DIR, checkpoint_steps(run_dir)) from None
    return restored.state["params"]
