"""Plans for the GPT-2 sizes, tasks and targets of docs/planning.md, printed as one Markdown table.

    python benchmarks/plan_table.py                      # every row (an hour or more on a 2-core CPU)
    python benchmarks/plan_table.py --only 124m --json out.json
    python benchmarks/plan_table.py --no-search          # one compilation per row: fits at the recipe's size?

Each row is `jaxgpt plan` for GPT-2 at context 1024 in bfloat16 (`configs/gpt2_124m.py` with --preset and
overrides): the largest micro-batch that fits per device, what it needs, the attention kernel compiled and
the collectives of one step. Needs the `plan` extra; sets JAX_PLATFORMS=cpu itself.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxgpt import config as config_lib

from jaxgpt import recipe
from jaxgpt.config import ModelConfig  # noqa: E402
from jaxgpt.errors import UserError  # noqa: E402
from jaxgpt.model.lora import LoraConfig
from jaxgpt.plan import report, targets  # noqa: E402
from jaxgpt.plan.step import Job  # noqa: E402
from jaxgpt.model.parts import Parts

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "gpt2_124m.py"
SIZES = {"124m": "gpt2", "355m": "gpt2-medium", "774m": "gpt2-large", "1.5b": "gpt2-xl"}
# (size, task, trainable, target, overrides)
ROWS = [
    *[("124m", "pretrain", "all", t, ()) for t in ("h100", "a100-40g", "l4", "v5e-1")],
    *[("355m", "pretrain", "all", t, ()) for t in ("h100", "a100-40g")],
    *[(s, "pretrain", "all", t, ("mesh.fsdp=8",)) for s in ("774m", "1.5b") for t in ("h100x8", "v5e-8")],
    ("1.5b", "pretrain", "all", "h100", ("model.remat=full",)),
    *[("124m", task, tr, "h100", ()) for task in ("instruct", "classify", "dpo") for tr in ("all", "lora")],
    ("124m", "dpo", "all", "v5e-1", ()),
    ("1.5b", "instruct", "lora", "h100", ())]


def job_for(size: str, task: str, trainable: str, overrides) -> Job:
    cfg = recipe.load_config_file(RECIPE)
    cfg = recipe.apply_overrides(cfg, [f"--{o}" for o in overrides])
    m = cfg.model
    model = ModelConfig.preset(SIZES[size], **{f: getattr(m, f) for f in ("block_size", "dtype", "remat", "attention")})
    cfg = config_lib.validate(dataclasses.replace(cfg, model=model))
    lora = LoraConfig() if trainable == "lora" else None
    return Job(cfg, task, Parts(trainable, 1, lora))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="rows whose size, task or target contains this text")
    ap.add_argument("--skip", default="", help="leave out rows whose target contains this text")
    ap.add_argument("--start", type=int, default=0, help="begin at this row (0-based), to finish a cut run")
    ap.add_argument("--no-search", dest="search", action="store_false")
    ap.add_argument("--json", default=None, help="write every plan here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = ap.parse_args()
    if args.json and Path(args.json).exists() and not args.overwrite:
        print(f"error: {args.json} already exists; choose another --json or pass --overwrite", file=sys.stderr)
        return 2
    print("| model | task | trainable | target | mesh | attention | largest micro-batch | GiB/device at it "
          "| next size needs | collectives per step | compiles, s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    plans = []
    for size, task, trainable, target, overrides in ROWS[args.start:]:
        if args.only and not any(args.only in x for x in (size, task, target, trainable)):
            continue
        if args.skip and args.skip in target:
            continue
        t0 = time.perf_counter()
        try:
            plan = report.make_plan(job_for(size, task, trainable, overrides), targets.get(target),
                                    search=args.search, say=lambda s: None)
        except UserError as e:
            print(f"| {size} | {task} | {trainable} | {target} | | error: {e} | | | | | |", flush=True)
            continue
        plans.append(plan)
        best, nxt, step = plan["largest_fitting"], plan["next_size"], plan["step"]
        shown = best or (step if step["fits"] else None)
        program = plan["program"] or {"kernels": {}, "collectives": {}}
        kern = ", ".join(program["kernels"]) or step["attention"]
        coll = "; ".join(f"{k} x{v['count']}" for k, v in sorted(program["collectives"].items())) or "none"
        mesh = "x".join(str(v) for v in plan["mesh"].values())
        extra = f" ({', '.join(overrides)})" if overrides else ""
        if args.search:
            size_text = shown["micro_batch"] if shown else "none fits"
        else:  # only the recipe's own micro-batch was compiled
            size_text = f"{step['micro_batch']} {'fits' if step['fits'] else 'does not fit'}"
            shown = step
        print(f"| {size}{extra} | {task} | {trainable} | {target} | {mesh} | {kern} | {size_text} | "
              f"{shown['total_gib'] if shown else ''} | {nxt['total_gib'] if nxt else ''} | {coll} | "
              f"{plan['compiles']}, {time.perf_counter() - t0:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"plans": plans}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
