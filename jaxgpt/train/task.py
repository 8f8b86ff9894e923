"""What a kind of training adds to the engine (`Task`): its batches, evaluation sets, what it records and
writes. Pretraining (pretrain.py) and every finetune (finetune/) are tasks on the one engine."""

from __future__ import annotations

import numpy as np

from jaxgpt.train.steps import TrainState


class Task:
    """What a kind of training adds to the engine. Subclasses set the attributes and override what they need.
    The hooks get the `Engine` running them as `engine` (a task never builds one)."""

    name = "pretrain"
    plot_x = "step"  # x axis of loss.png: "step" or "tokens"
    plots: tuple[tuple[str, str, str, str], ...] = ()  # more charts: (file, eval metric, title, y label)
    settings: dict = {}  # task settings besides config.json that a resumed run must share
    resumable: frozenset = frozenset()  # the settings that may change on resume
    added: dict = {}  # settings newer than some runs, with the value such a run had
    describe: dict = {}  # what task.json also records for loaders (labels, template, LoRA, ...)
    summary = ""  # a few words on the data for the run's opening line

    def batch(self, step: int) -> tuple:
        """The global batch of `step`: arrays (or lazy readers with `shape` and `[index]`) of shape
        (grad_accum, micro_batch, ...); a function of the seed and the step alone."""
        raise NotImplementedError

    def batch_tokens(self, batch: tuple) -> int:
        """Tokens one step processes (for tokens/s and MFU): by default the size of the first array."""
        return int(np.prod(batch[0].shape))

    def eval_sets(self) -> dict[str, list[tuple]]:
        """Fixed evaluation batches (arrays (B, ...)) by name; "val" also picks the best checkpoint."""
        return {}

    def summarize(self, metrics: dict) -> dict:
        """Add derived numbers (perplexity, ...) to an evaluation's means."""
        return metrics

    def extra_eval(self, engine, state: TrainState, frozen: dict) -> dict:
        """More evaluation metrics, computed at every evaluation (e.g. HellaSwag accuracy)."""
        return {}

    def record(self, step: int) -> dict:
        """Extra fields of every metrics.jsonl record (e.g. the epoch)."""
        return {}

    def begin(self, engine, state: TrainState, frozen: dict, resumed: bool) -> None:
        """Called once the state exists, before the first step (e.g. to compute reference numbers)."""

    def after_step(self, engine, state: TrainState, frozen: dict, step: int) -> bool:
        """Called after every step; returns True if it spent time that is not training (a sample)."""
        return False

    def finish(self, engine, state: TrainState, frozen: dict):
        """What the task writes once training has reached max_steps; returned by `run`."""
        return None
