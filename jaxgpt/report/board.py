"""Watching a run: TensorBoard event files, `jax.profiler` traces of chosen steps, the compilation cache.

- `Board`: with `train.tensorboard=true`, every record that goes to metrics.jsonl (losses, learning rate,
  gradient norm, tokens/s, MFU, evaluation metrics) also goes, as scalars, to event files in
  `<run>/tensorboard/`, and samples as text; written by `tensorboardX` (the `jaxgpt[tensorboard]` extra).
  A resumed run purges the steps after its checkpoint, as metrics.jsonl drops them.
- `Profile`: `train.profile_steps=A:B` records a trace of steps A to B (1-based, inclusive) into
  `<run>/profile/`, for TensorBoard's profile plugin or Perfetto.
- `use_compile_cache`: JAX's persistent compilation cache, on by default (`train.compile_cache`), so a
  restarted or resumed run does not compile its steps again.
"""

from __future__ import annotations

from pathlib import Path

from jaxgpt.errors import UserError

BOARD_DIR, PROFILE_DIR = "tensorboard", "profile"
EXTRA = "pip install -e \".[tensorboard]\""


class Board:
    """TensorBoard event files of a run (a no-op when off or not the primary process)."""

    def __init__(self, run_dir: Path, enabled: bool, primary: bool = True, purge_step: int | None = None):
        self.writer = None
        if not (enabled and primary):
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UserError(f"train.tensorboard needs the tensorboardX package: {EXTRA}") from None
        self.writer = SummaryWriter(logdir=str(run_dir / BOARD_DIR), purge_step=purge_step or None)

    @staticmethod
    def check(enabled: bool) -> None:
        """Refuse train.tensorboard without its extra before any work."""
        if enabled:
            try:
                import tensorboardX  # noqa: F401  (only whether it is there)
            except ImportError:
                raise UserError(f"train.tensorboard needs the tensorboardX package: {EXTRA}") from None

    def scalars(self, record: dict) -> None:
        if self.writer is None:
            return
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text.replace("\n", "  \n"), step)  # markdown line breaks
            self.writer.flush()

    def close(self) -> None:
        """Close the event file. Later writes are dropped: tensorboardX would open a second file, whose
        purge marker (a resumed run's) hides every earlier step from TensorBoard."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Profile:
    """Start a trace before step A and stop it after step B (steps counted from 1)."""

    def __init__(self, run_dir: Path, steps: tuple[int, int] | None):
        self.folder, self.steps, self.on = run_dir / PROFILE_DIR, steps, False

    def before(self, step: int) -> None:
        import jax

        if self.steps and step == self.steps[0] and not self.on:
            self.folder.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.folder))
            self.on = True

    def after(self, step: int, result) -> bool:
        """Stop after the last traced step; True when it did (the time spent is not training)."""
        import jax

        if self.on and step >= self.steps[1]:
            jax.block_until_ready(result)
            jax.profiler.stop_trace()
            self.on = False
            return True
        return False

    def close(self) -> None:
        if self.on:
            import jax

            jax.profiler.stop_trace()
            self.on = False
