"""The default finetunes end to end on a CPU, from a small GPT-2-BPE model pretrained on the default corpus.

    python benchmarks/finetune.py                       # pretrains the base model first (minutes)
    python benchmarks/finetune.py --base out/shakespeare_gpt2bpe --epochs 3

Prints the classification test accuracy against the majority class, the instruction test exact-match and
token F1 against the same model before finetuning, per task kind too (full finetuning and LoRA each), and
DPO on top of the fully finetuned instruction model: exact match before and after, and the test reward
accuracy. Everything goes under --out (replaced on each run).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxgpt.finetune import classify, dpo, instruct, scoring, tasks  # noqa: E402
from jaxgpt.recipe import apply_overrides, load_config_file  # noqa: E402
from jaxgpt.train.pretrain import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pretrain(out: Path, steps: int) -> Path:
    cfg = load_config_file(ROOT / "configs" / "shakespeare_gpt2bpe.py")
    cfg = apply_overrides(cfg, [
        f"--train.out_dir={out / 'base'}", f"--train.max_steps={steps}", "--train.batch_size=16",
        "--train.learning_rate=2e-3", "--train.warmup_steps=50", f"--train.eval_interval={steps}",
        "--train.sample_interval=0", "--train.progress=false",
    ])
    train(cfg)
    return out / "base"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="a GPT-2-BPE model to start from (default: pretrain one)")
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--out", default="out/bench_finetune")
    parser.add_argument("--epochs", type=int, default=None, help="override both recipes' epochs")
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch: checks the script runs")
    args = parser.parse_args()
    out = Path(args.out)
    base = Path(args.base) if args.base else pretrain(out, args.pretrain_steps)
    rows = []
    common = dict(init_from=str(base), overwrite=True, progress=False,
                  **({"epochs": args.epochs} if args.epochs else {}))
    if args.quick:
        common.update(epochs=1)
    for trainable in ("all", "lora"):
        t0 = time.perf_counter()
        extra = dict(per_class=40) if args.quick else {}
        if trainable == "lora":  # adapters start from zero and are few: they take a larger step
            extra["learning_rate"] = 10 * classify.ClassifyConfig().train.learning_rate
        r = classify.finetune(classify.ClassifyConfig.of(out_dir=str(out / f"classify_{trainable}"), trainable=trainable,
                                                      **common, **extra))
        rows.append(f"| classify (comedy vs tragedy), {trainable} | test accuracy {r['test_accuracy']:.3f} | "
                    f"majority class {r['majority_baseline']:.3f} | {time.perf_counter() - t0:.0f} s |")
    for trainable in ("all", "lora"):
        t0 = time.perf_counter()
        extra = dict(n_tasks=60, max_new_tokens=8) if args.quick else {}
        if trainable == "lora":
            extra["learning_rate"] = 5 * instruct.InstructConfig().train.learning_rate
        cfg = instruct.InstructConfig.of(out_dir=str(out / f"instruct_{trainable}"), trainable=trainable,
                                      score_base=trainable == "all", **common, **extra)
        r = instruct.finetune(cfg)
        rows.append(f"| instruct (generated set), {trainable} | exact match {r['test']['exact_match']:.3f}, "
                    f"token F1 {r['test']['token_f1']:.3f} | "
                    + (f"before finetuning {r['base_test']['exact_match']:.3f}, F1 {r['base_test']['token_f1']:.3f}"
                       if r["base_test"] else "") + f" | {time.perf_counter() - t0:.0f} s |")
        responses = json.loads((out / f"instruct_{trainable}" / instruct.RESPONSES_FILE).read_text())
        by_kind: dict[str, list[bool]] = {}
        for e in responses:
            by_kind.setdefault(tasks.kind_of(e) or "?", []).append(scoring.exact_match(e["model_response"], e["output"]))
        print(f"exact match by kind ({trainable}): "
              + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(by_kind.items())))
    t0 = time.perf_counter()
    extra = dict(n_pairs=60, max_new_tokens=8) if args.quick else {}
    r = dpo.finetune(dpo.DPOConfig.of(**{**common, "init_from": str(out / "instruct_all")},
                                   out_dir=str(out / "dpo"), **extra))
    em = r["exact_match"]
    rows.append(f"| dpo on the instruct model (generated pairs), all | exact match {em['after']['exact_match']:.3f}, "
                f"test reward accuracy {r['test']['reward_accuracy']:.3f} | before DPO "
                f"{em['before']['exact_match']:.3f} | {time.perf_counter() - t0:.0f} s |")
    print("\n| finetune | result | baseline | time |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
