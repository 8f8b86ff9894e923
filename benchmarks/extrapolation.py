"""Do rotary positions extrapolate? Train the default character recipe (context 64) twice, with learned
positions and with RoPE, then score both on the validation text in windows of 64, 128, 256 and 512 tokens;
the RoPE model also with its positions stretched back into its trained range ("linear") and with Llama 3's
frequency bands ("llama3"). Prints a markdown table and draws the losses.

    python benchmarks/extrapolation.py --out /tmp/extrapolation [--steps 900] [--plot docs/images/extrapolation.png]

Each window's loss is the mean over all its targets (early targets see little context, late ones see up to
the whole window), over the same validation text for every window size.
"""

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxgpt.data import dataset  # noqa: E402
from jaxgpt.errors import UserError  # noqa: E402
from jaxgpt.eval.corpus import corpus_loss  # noqa: E402
from jaxgpt.model.gpt import GPT  # noqa: E402
from jaxgpt.report.plot import plot_lines  # noqa: E402
from jaxgpt.store.loader import load  # noqa: E402

WINDOWS = (64, 128, 256, 512)
VARIANTS = {"learned": [], "rope": ["--model.position=rope"]}


def train(out: Path, name: str, steps: int) -> float:
    """Train one variant of the default recipe (skipped when its run exists); returns the wall seconds."""
    run = out / name
    if (run / "checkpoints").is_dir():
        return float("nan")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), f"--train.out_dir={run}", f"--train.max_steps={steps}",
                    "--train.sample_interval=0", "--train.progress=false", f"--data.cache_dir={out / 'data'}",
                    *VARIANTS[name]], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def score(run: Path, window: int, scaling: str | None, val) -> float | str:
    model = load(run)
    cfg = model.config
    if scaling:
        cfg = dataclasses.replace(cfg, rope_scaling=scaling, rope_factor=max(window / cfg.block_size, 1.0),
                                  rope_context=cfg.block_size)
    try:
        return corpus_loss(GPT(cfg), model.gpt_params, val, window, batch_size=8)["loss"]
    except UserError as e:
        return f"refused: {e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the two runs and the prepared data")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--plot", default=None, help="write the chart here (PNG)")
    args = p.parse_args()
    out = Path(args.out)
    seconds = {name: train(out, name, args.steps) for name in VARIANTS}
    run_cfg = load(out / "learned").run_config
    d = run_cfg.data
    val = dataset.open_data(d.source, d.tokenizer, str(out / "data"), d.val_fraction).splits["val"]
    rows = {"learned": ("learned", None), "rope": ("rope", None), "rope + linear": ("rope", "linear"),
            "rope + llama3": ("rope", "llama3")}
    table = {label: {w: score(out / run, w, scaling, val) for w in WINDOWS} for label, (run, scaling) in rows.items()}
    print(f"\n{args.steps} steps each; training took {', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}\n")
    print("| model (trained at context 64) | " + " | ".join(f"loss at {w}" for w in WINDOWS) + " |")
    print("|---|" + "---:|" * len(WINDOWS))
    for label, losses in table.items():
        cells = [f"{v:.4f}" if isinstance(v, float) else "refused" for v in losses.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    refusal = next(v for v in table["learned"].values() if isinstance(v, str))
    print(f"\nlearned positions at 128: {refusal}")
    (out / "extrapolation.json").write_text(json.dumps(table, indent=1))
    if args.plot:
        series = {label: ([w for w, v in losses.items() if isinstance(v, float)],
                          [v for v in losses.values() if isinstance(v, float)]) for label, losses in table.items()}
        plot_lines(args.plot, series, title="Validation loss by window, trained at context 64",
                   xlabel="window (characters)", ylabel="loss")


if __name__ == "__main__":
    main()
