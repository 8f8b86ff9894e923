"""The files a training run keeps beside its checkpoints: metrics.jsonl, loss.png and samples.txt.

Only process 0 of a multi-process run writes them (the others get a RunFiles that does nothing), so one
run directory shared by every host holds one copy of each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jaxgpt.errors import UserError
from jaxgpt.progress import Progress, format_count

METRICS_FILE = "metrics.jsonl"


class RunFiles:
    def __init__(self, run_dir: Path, primary: bool = True):
        self.run_dir = run_dir
        self.primary = primary

    @property
    def metrics(self) -> Path:
        return self.run_dir / METRICS_FILE

    def check_disk(self, checkpoint_bytes: int) -> None:
        """Refuse to start when the run directory cannot be written or cannot hold two checkpoints."""
        probe = self.run_dir / ".write-test"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write in {self.run_dir} ({e.strerror}); choose another train.out_dir") from None
        need, free = 2 * checkpoint_bytes, shutil.disk_usage(self.run_dir).free
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

    def plot(self) -> None:
        """loss.png: train and validation loss against tokens seen."""
        from jaxgpt.plot import plot_lines  # only needed once, at the end of a run

        records = [json.loads(l) for l in self.metrics.read_text().splitlines() if l]
        series = {}
        for key, label in (("loss", "train"), ("val_loss", "validation")):
            pts = [(r["tokens"], r[key]) for r in records if key in r]
            series[label] = ([p[0] for p in pts], [p[1] for p in pts])
        plot_lines(self.run_dir / "loss.png", series, title="GPT loss", xlabel="tokens seen",
                   ylabel="loss (nats/token)")
