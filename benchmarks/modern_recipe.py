"""The default character recipe against the modern one (configs/shakespeare_char_modern.py: RoPE, RMSNorm,
SwiGLU, QK-norm, no biases, Muon) and the variants it was chosen from, trained side by side on this machine:
each variant once per round, the order reversed every other round (A B C D, D C B A, ...), so drift over the
session falls on all of them alike. Prints a markdown table and, with --plot, draws validation loss against
training time.

    python benchmarks/modern_recipe.py --out /tmp/modern [--rounds 2] [--plot docs/images/modern_recipe.png]

"Training time" adds up the measured time of the training steps (from each log record's tokens/s), leaving
out compilation and evaluation; "wall" is the whole `python train.py` process, start-up included. "Reaches
default" is the training time at which the variant's validation loss first falls to the default recipe's
final validation loss (read between evaluations, every 100 steps, by linear interpolation).
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxgpt.report.plot import plot_lines  # noqa: E402

MODERN = str(ROOT / "configs" / "shakespeare_char_modern.py")
RELU2 = ["--model.mlp=relu2", "--model.n_inner=0"]  # 4 x n_embd: the same weights as SwiGLU at 344
VARIANTS = {
    "default (GPT-2)": [],
    "modern, ReLU², AdamW": ["--config", MODERN, *RELU2, "--train.optimizer=adamw"],
    "modern, SwiGLU, AdamW": ["--config", MODERN, "--train.optimizer=adamw"],
    "modern, ReLU², Muon": ["--config", MODERN, *RELU2],
    "modern (SwiGLU, Muon)": ["--config", MODERN],
}


def run(out: Path, args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"--train.out_dir={out}",
                    "--train.eval_interval=100",
                    "--train.sample_interval=0", "--train.progress=false", "--train.compile_cache=",
                    f"--data.cache_dir={out.parent / 'data'}"], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


def curve(run_dir: Path) -> list[tuple[float, float]]:
    """(training seconds so far, validation loss) at each evaluation."""
    seconds, prev_tokens, points = 0.0, 0, []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "tokens_per_s" in r:
            seconds += (r["tokens"] - prev_tokens) / r["tokens_per_s"]
            prev_tokens = r["tokens"]
        if "val_loss" in r:
            points.append((seconds, r["val_loss"]))
    return points


def reaches(points: list[tuple[float, float]], target: float) -> float | None:
    for (t0, l0), (t1, l1) in zip([(0.0, float("inf"))] + points, points):
        if l1 <= target:
            return t1 if l0 == float("inf") else t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--plot", default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--target", type=float, default=None,
                   help="the loss to reach (default: the first variant's final validation loss)")
    args = p.parse_args()
    out = Path(args.out)
    names = args.variants
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            run_dir = out / f"round{r}" / re.sub(r"[^A-Za-z0-9]+", "_", n).strip("_")
            wall = run(run_dir, VARIANTS[n])
            results[n].append({"wall": wall, "curve": curve(run_dir)})
            print(f"round {r + 1}: {n}: {wall:.0f} s, final val loss {results[n][-1]['curve'][-1][1]:.4f}", flush=True)
    target = args.target or statistics.mean(res["curve"][-1][1] for res in results[names[0]])
    print(f"\n| recipe | wall (mean of {args.rounds}) | training time | final val loss | reaches "
          f"{target:.4f} after |\n|---|---:|---:|---:|---:|")
    for n in names:
        runs = results[n]
        hit = [reaches(res["curve"], target) for res in runs]
        hit_text = f"{statistics.mean(hit):.0f} s" if all(h is not None for h in hit) else "not reached"
        print(f"| {n} | {statistics.mean(r['wall'] for r in runs):.0f} s | "
              f"{statistics.mean(r['curve'][-1][0] for r in runs):.0f} s | "
              f"{statistics.mean(r['curve'][-1][1] for r in runs):.4f} | {hit_text} |")
    (out / "modern_recipe.json").write_text(json.dumps(results, indent=1))
    if args.plot:
        first = {n.replace("²", " squared"): results[n][0]["curve"] for n in names}  # the plot's font has no ²
        plot_lines(args.plot, {n: ([t for t, _ in c], [v for _, v in c]) for n, c in first.items()},
                   title="Val loss by training time", xlabel="training seconds", ylabel="validation loss")


if __name__ == "__main__":
    main()
