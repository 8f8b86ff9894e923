"""A run directory: every file name in it and the rules for each, in one place (`RunDir`).

    <run>/config.json          the resolved Config: a checkpoint alone rebuilds its model
          tokenizer.json       the tokenizer's meta(), so the run can encode and decode without its data
          task.json            which task wrote the run, its settings, what a loader needs (labels, LoRA)
          checkpoints/<step>/  Orbax train states (checkpoint.py); partial_checkpoints/: unfinished ones
          frozen/              the weights a finetune does not train, saved once at its start
          metrics.jsonl        one JSON record per log interval and evaluation; loss.png and charts
          samples.txt          samples during pretraining; results.json: a finetune's, written last
          tensorboard/, profile/   with train.tensorboard and train.profile_steps (report/board.py)

Only process 0 of a multi-process run writes the files beside the checkpoints (the others get a RunDir
that writes nothing), so one directory shared by every host holds one copy of each. A run resumes only
with the settings it was started with, less those that change how long it runs, what it reports and
where (config.RESUMABLE_KEYS and each task's `resumable`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jaxgpt import config as config_lib
from jaxgpt.config import Config
from jaxgpt.errors import UserError
from jaxgpt.files import OUTPUT_MARKER, read_json_object, write_atomic, write_json
from jaxgpt.report.plot import plot_lines
from jaxgpt.report.progress import Progress, format_count

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TASK_FILE = "task.json"
CHECKPOINT_DIR = "checkpoints"
PARTIAL_DIR = "partial_checkpoints"
FROZEN_DIR = "frozen"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"
RESULTS_FILE = "results.json"  # written last: a folder with it holds a finished finetune


class RunDir:
    """One run directory. `primary`: whether this process writes the files beside the checkpoints."""

    def __init__(self, path: str | Path, primary: bool = True):
        self.path, self.primary = Path(path), primary

    config = property(lambda self: self.path / CONFIG_FILE)
    tokenizer = property(lambda self: self.path / TOKENIZER_FILE)
    task = property(lambda self: self.path / TASK_FILE)
    checkpoints = property(lambda self: self.path / CHECKPOINT_DIR)
    partial = property(lambda self: self.path / PARTIAL_DIR)
    frozen = property(lambda self: self.path / FROZEN_DIR)
    metrics = property(lambda self: self.path / METRICS_FILE)
    samples = property(lambda self: self.path / SAMPLES_FILE)
    results = property(lambda self: self.path / RESULTS_FILE)

    # --- reading -----------------------------------------------------------------------------------------

    def has_checkpoints(self) -> bool:
        return self.config.is_file() and self.checkpoints.is_dir()

    def read_config(self) -> Config | None:
        """The run's config.json, validated (None if it has none)."""
        if not self.config.is_file():
            return None
        fix = "restore it or use a new train.out_dir"
        d = read_json_object(self.config, fix)
        try:
            return config_lib.validate(Config.from_dict(d))
        except UserError as e:
            raise UserError(f"{self.config} holds settings this jaxgpt cannot use ({e}); {fix}") from None

    def read_tokenizer(self) -> dict | None:
        """The run's tokenizer.json, or None if it has none."""
        if not self.tokenizer.is_file():
            return None
        return read_json_object(self.tokenizer, "restore it from a copy or use a new directory")

    def read_task(self) -> dict | None:
        """The run's task.json (None for a pretraining run written before there was one, or a converted model)."""
        if not self.task.is_file():
            return None
        return read_json_object(self.task, "restore it from a copy or use a new output folder")

    def evaluations(self) -> list[dict]:
        """The evaluation records of metrics.jsonl (those with validation metrics)."""
        lines = self.metrics.read_text().splitlines() if self.metrics.is_file() else []
        return [r for r in map(json.loads, lines) if any(k.startswith("val_") for k in r)]

    def is_ours(self) -> bool:
        """Whether jaxgpt wrote this folder (a task.json or the output marker), or it is empty."""
        return self.task.is_file() or (self.path / OUTPUT_MARKER).is_file() or not any(self.path.iterdir())

    # --- the rules ---------------------------------------------------------------------------------------

    @staticmethod
    def check_path(path: str | Path) -> RunDir:
        """Refuse, before any work, an output folder that cannot be one: a broken link, or a file."""
        path = Path(path)
        if path.is_symlink() and not path.exists():
            raise UserError(f"the output folder {path} is a broken symbolic link; fix it or choose another")
        if path.exists() and not path.is_dir():
            raise UserError(f"the output folder {path} exists and is not a directory")
        return RunDir(path)

    def check_resume(self, cfg: Config, task: str, settings: dict, resumable: frozenset,
                     tokenizer_meta: dict | None, added: dict | None = None) -> None:
        """Refuse to continue a run whose model, data, optimiser or task settings differ from these; a
        setting in `added` that the run does not record had the value given there."""
        old = self.read_config()
        changed = [] if old is None else [d for d in config_lib.diff(old, cfg)
                                          if d.split(":")[0] not in config_lib.RESUMABLE_KEYS]
        saved = self.read_task()
        if saved is not None:
            before = saved.get("settings", {})
            before = {**(added or {}), **before}
            changed += [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in settings.items()
                        if k not in resumable and before.get(k) != v]
            if saved.get("task") != task:
                changed.insert(0, f"task: {saved.get('task')!r} -> {task!r}")
        if changed:
            raise UserError(f"{self.path} holds a run with other settings ({'; '.join(changed)}); "
                            "use a new output folder or the settings of the existing run")
        saved_tok = self.read_tokenizer()
        if saved_tok is not None and tokenizer_meta is not None and saved_tok != tokenizer_meta:
            raise UserError(f"the tokenizer of the data differs from the one saved in {self.tokenizer}; use the "
                            "run's data or a new output folder")

    def check_disk(self, checkpoint_bytes: int, once_bytes: int = 0) -> None:
        """Refuse to start when the run directory cannot be written or cannot hold two checkpoints (and
        `once_bytes` written once: a finetune's frozen weights)."""
        probe = self.path / ".write-test"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write in {self.path} ({e.strerror}); choose another train.out_dir") from None
        need, free = 2 * checkpoint_bytes + once_bytes, shutil.disk_usage(self.path).free
        if free < need:
            raise UserError(f"{self.path} has {format_count(free)}B free but two checkpoints of this model need "
                            f"about {format_count(need)}B; free some space or choose another train.out_dir")

    def set_aside_partial(self) -> list[Path]:
        """Move checkpoints that were never finished (the process died while writing them) out of the way,
        into partial_checkpoints/; returns where they went. Orbax writes each checkpoint into a temporary
        folder and renames it only when complete, so an unfinished one is recognisable by name."""
        moved = []
        for path in sorted(self.checkpoints.glob("*.orbax-checkpoint-tmp*")) if self.checkpoints.is_dir() else []:
            target = self.partial / path.name
            target.parent.mkdir(exist_ok=True)
            path.rename(target)
            moved.append(target)
        return moved

    # --- writing -----------------------------------------------------------------------------------------

    def write_header(self, cfg: Config, tokenizer_meta: dict | None, task: dict | None = None) -> None:
        """config.json, tokenizer.json and task.json: what a loader needs beside the checkpoints."""
        if self.primary:
            write_json(self.config, cfg.to_dict())
            if tokenizer_meta is not None:
                write_atomic(self.tokenizer, json.dumps(tokenizer_meta))
            if task is not None:
                write_json(self.task, task)

    def truncate_metrics(self, step: int) -> None:
        """Drop records of steps after the checkpoint we resume from (those steps run again), and a last
        line cut short when the previous process was killed while writing it."""
        if not self.primary or not self.metrics.exists():
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
            write_atomic(self.metrics, "".join(kept))

    def write_metrics(self, record: dict) -> None:
        if self.primary:
            with self.metrics.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def log_sample(self, step: int, text: str, progress: Progress, title: str) -> None:
        """Print a sample and append it to samples.txt (earlier samples are kept)."""
        if self.primary:
            progress.print(f"--- {title} ---\n{text}\n---")
            with self.samples.open("a") as f:
                f.write(f"--- step {step} ---\n{text}\n\n")

    def plot(self, x: str = "tokens", charts: tuple = ()) -> None:
        """loss.png: train and validation loss against `x` ("tokens" seen or "step"); then each chart of
        `charts`, (file, eval metric, title, y label): that metric on every evaluated set."""
        if not self.primary or not self.metrics.exists():
            return
        records = [json.loads(line) for line in self.metrics.read_text().splitlines() if line]
        xlabel = "tokens seen" if x == "tokens" else x

        def points(key: str):
            pts = [(r[x], r[key]) for r in records if key in r and x in r]
            return [p[0] for p in pts], [p[1] for p in pts]

        plot_lines(self.path / "loss.png", {"train": points("loss"), "validation": points("val_loss")},
                   title="GPT loss", xlabel=xlabel, ylabel="loss")
        for file, metric, title, ylabel in charts:
            names = sorted({k[:-len(metric) - 1] for r in records for k in r if k.endswith("_" + metric)})
            plot_lines(self.path / file, {n: points(f"{n}_{metric}") for n in names}, title=title,
                       xlabel=xlabel, ylabel=ylabel)

    def write_results(self, results: dict) -> None:
        """A finetune's results.json, written last (it marks the run finished), and the output marker that
        lets --overwrite replace the folder later."""
        if self.primary:
            (self.path / OUTPUT_MARKER).write_text("written by jaxgpt; --overwrite may replace this folder\n")
            write_json(self.results, results)
