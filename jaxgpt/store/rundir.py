"""A run directory's own files beside its checkpoints: task.json, metrics.jsonl, the plots, samples.txt.

Only process 0 of a multi-process run writes them (the others get a RunFiles that does nothing), so one
run directory shared by every host holds one copy of each. `task.json` says which task wrote the run (and
what a loader needs to rebuild its model); a finetune keeps the weights it does not train in `frozen/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jaxgpt.errors import UserError
from jaxgpt.files import read_json_object
from jaxgpt.report.progress import Progress, format_count
from jaxgpt.report.plot import plot_lines

METRICS_FILE = "metrics.jsonl"
TASK_FILE = "task.json"  # which task wrote a run, its settings, and what a loader needs to rebuild the model
FROZEN_DIR = "frozen"  # the weights a finetune does not train, saved once at its start


class RunFiles:
    def __init__(self, run_dir: Path, primary: bool = True):
        self.run_dir = run_dir
        self.primary = primary

    @property
    def metrics(self) -> Path:
        return self.run_dir / METRICS_FILE

    def check_disk(self, checkpoint_bytes: int, once_bytes: int = 0) -> None:
        """Refuse to start when the run directory cannot be written or cannot hold two checkpoints (and
        `once_bytes` written once: a finetune's frozen weights)."""
        probe = self.run_dir / ".write-test"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write in {self.run_dir} ({e.strerror}); choose another train.out_dir") from None
        need, free = 2 * checkpoint_bytes + once_bytes, shutil.disk_usage(self.run_dir).free
        if free < need:
            raise UserError(f"{self.run_dir} has {format_count(free)}B free but two checkpoints of this model need "
                            f"about {format_count(need)}B; free some space or choose another train.out_dir")

    def truncate_metrics(self, step: int) -> None:
        """Drop records of steps after the checkpoint we resume from (those steps run again), and a last
        line cut short when the previous process was killed while writing it."""
        if not self.metrics.exists():
            return
        lines = self.metrics.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                if line.endswith("\n") and json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a torn line: the process died mid-write
        if len(kept) < len(lines):
            self.metrics.write_text("".join(kept))

    def write_metrics(self, record: dict) -> None:
        if self.primary:
            with self.metrics.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def log_sample(self, step: int, text: str, progress: Progress, title: str) -> None:
        """Print a sample and append it to samples.txt (earlier samples are kept)."""
        if self.primary:
            progress.print(f"--- {title} ---\n{text}\n---")
            with (self.run_dir / "samples.txt").open("a") as f:
                f.write(f"--- step {step} ---\n{text}\n\n")

    def plot(self, x: str = "tokens", charts: tuple = ()) -> None:
        """loss.png: train and validation loss against `x` ("tokens" seen or "step"); then each chart of
        `charts`, (file, eval metric, title, y label): that metric on every evaluated set."""
        records = [json.loads(line) for line in self.metrics.read_text().splitlines() if line]
        xlabel = "tokens seen" if x == "tokens" else x

        def points(key: str):
            pts = [(r[x], r[key]) for r in records if key in r and x in r]
            return [p[0] for p in pts], [p[1] for p in pts]

        plot_lines(self.run_dir / "loss.png", {"train": points("loss"), "validation": points("val_loss")},
                   title="GPT loss", xlabel=xlabel, ylabel="loss")
        for file, metric, title, ylabel in charts:
            names = sorted({k[:-len(metric) - 1] for r in records for k in r if k.endswith("_" + metric)})
            plot_lines(self.run_dir / file, {n: points(f"{n}_{metric}") for n in names}, title=title,
                       xlabel=xlabel, ylabel=ylabel)


def check_out_dir(run_dir: str | Path) -> Path:
    """Refuse, before any work, an output folder that cannot be one: a broken link, or a file."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():
        raise UserError(f"the output folder {run_dir} is a broken symbolic link; fix it or choose another")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"the output folder {run_dir} exists and is not a directory")
    return run_dir


def read_task(run_dir: str | Path) -> dict | None:
    """A run's task.json (None for a pretraining run written before there was one, or a converted model)."""
    path = Path(run_dir) / TASK_FILE
    if not path.is_file():
        return None
    return read_json_object(path, "restore it from a copy or use a new output folder")


def write_task(run_dir: Path, info: dict) -> None:
    (run_dir / TASK_FILE).write_text(json.dumps(info, indent=2) + "\n")

