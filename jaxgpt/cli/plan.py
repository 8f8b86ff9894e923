"""The `jaxgpt plan` command: compile a recipe's train step for GPUs and TPUs that are not attached.

    jaxgpt plan --config configs/gpt2_124m.py --target h100,v5e-1 [--section.field=value ...]

It reads the recipe as `train.py` does (the same overrides), builds the job (pretraining or a finetune's
objective, which weights train), then for each target prints `jaxgpt.plan.report.table` and optionally
writes all plans as JSON. Registered by `cli.main.build_parser`; `cli.main.main` sets JAX_PLATFORMS=cpu first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from jaxgpt.config import PRESETS
from jaxgpt.errors import UserError


def add_parser(sub) -> None:
    from jaxgpt.plan.targets import TARGETS

    p = sub.add_parser(
        "plan", help="compile a recipe's train step for GPUs/TPUs without the hardware: memory, kernels, "
                     "collectives, the largest micro-batch that fits",
        description="Any recipe field can be overridden as in train.py: --model.remat=full --mesh.fsdp=8")
    p.add_argument("--config", default=None, help="recipe file (default configs/shakespeare_char.py)")
    p.add_argument("--target", required=True, help=f"one or more, comma-separated: {', '.join(TARGETS)}")
    p.add_argument("--task", choices=("pretrain", "instruct", "classify", "dpo"), default="pretrain",
                   help="the objective: pretraining, or a finetune's (default pretrain)")
    p.add_argument("--trainable", choices=("all", "head", "last_blocks", "lora"), default="all")
    p.add_argument("--last-blocks", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--classes", type=int, default=2, help="classify: the number of classes")
    p.add_argument("--preset", default=None, help="plan this model instead of the recipe's shape: "
                   f"{', '.join(PRESETS)} (the recipe's context, dtypes and remat are kept)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per micro-batch "
                   "(default: the recipe's train.batch_size / train.grad_accum)")
    p.add_argument("--no-search", dest="search", action="store_false",
                   help="do not search the largest micro-batch that fits (one compilation instead of several)")
    p.add_argument("--mem-fraction", type=float, default=None, help="share of a device's memory the step may "
                   "use (default: 0.75 on a GPU, JAX's preallocated pool; 1 on a TPU)")
    p.add_argument("--margin", type=float, default=0.05, help="kept free of what --mem-fraction allows")
    p.add_argument("--json", default=None, help="also write the plans here (JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(fn=_plan, overrides=True)


def _job(args: argparse.Namespace, overrides: list[str]):
    from jaxgpt import config as config_lib
    from jaxgpt import recipe
    from jaxgpt.config import ModelConfig
    from jaxgpt.model.lora import LoraConfig
    from jaxgpt.model.parts import Parts
    from jaxgpt.plan.step import Job

    cfg = recipe.load_config_file(args.config or recipe.default_config_path())
    cfg = config_lib.validate(recipe.apply_overrides(cfg, overrides))
    if args.micro_batch is not None:
        if args.micro_batch < 1:
            raise UserError(f"--micro-batch must be at least 1, got {args.micro_batch}")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, batch_size=args.micro_batch * cfg.train.grad_accum))
    m = cfg.model
    if args.preset:
        m = ModelConfig.preset(args.preset, **{f: getattr(m, f) for f in (
            "block_size", "dropout", "dtype", "param_dtype", "attention", "remat")})
    elif cfg.train.init_from and Path(cfg.train.init_from).exists():
        from jaxgpt.store.loader import read_config

        pre = read_config(cfg.train.init_from)
        m = dataclasses.replace(m, **{f: getattr(pre, f) for f in config_lib.ARCHITECTURE},
                                block_size=min(m.block_size, pre.block_size))
    else:
        if cfg.train.init_from:
            print(f"note: train.init_from {cfg.train.init_from} is not here; planning the recipe's own model shape")
        m = dataclasses.replace(m, vocab_size=_vocab_size(cfg))
    for key, value in (("--classes", args.classes), ("--lora-rank", args.lora_rank), ("--last-blocks", args.last_blocks)):
        if value < 1:
            raise UserError(f"{key} must be at least 1, got {value}")
    if args.task == "pretrain" and args.trainable != "all":
        raise UserError("pretraining trains every weight; --trainable is for --task instruct, classify or dpo")
    lora = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha) if args.trainable == "lora" else None
    cfg = config_lib.validate(dataclasses.replace(cfg, model=m))
    return Job(cfg, args.task, Parts(args.trainable, args.last_blocks, lora), n_classes=args.classes)


def _vocab_size(cfg) -> int:
    """The vocabulary the trainer would size the model with: GPT-2's without reading any data; a
    character or word vocabulary from the recipe's (prepared, cached) corpus."""
    if cfg.data.tokenizer == "gpt2":
        return 50257
    from jaxgpt.data import dataset
    from jaxgpt.tokenizer.kinds import tokenizer_from_meta

    data = dataset.open_data(cfg.data.source, cfg.data.tokenizer, cfg.data.cache_dir, cfg.data.val_fraction)
    return tokenizer_from_meta(data.tokenizer_meta).vocab_size


def _advice(plan: dict) -> str:
    """What to change when nothing fits."""
    tips = []
    if plan["model"]["remat"] != "full":
        tips.append("--model.remat=full")
    if plan["target"]["devices"] > 1 and plan["mesh"].get("fsdp", 1) == 1:
        tips.append(f"--mesh.fsdp={plan['target']['devices']}")
    if plan["model"]["dtype"] == "float32":
        tips.append("--model.dtype=bfloat16")
    tips.append("a target with more memory")
    return ", ".join(tips)


def _plan(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxgpt.plan import report, targets

    chosen = [targets.get(name.strip()) for name in args.target.split(",") if name.strip()]
    if not chosen:
        raise UserError("--target is empty; name one or more targets, e.g. --target h100")
    if not 0 <= args.margin < 1 or (args.mem_fraction is not None and not 0 < args.mem_fraction <= 1):
        raise UserError("--margin must be in [0, 1) and --mem-fraction in (0, 1]")
    if args.json and Path(args.json).exists() and not args.overwrite:
        raise UserError(f"{args.json} already exists; choose another --json or pass --overwrite")
    for t in chosen:  # a missing compiler is found before any work
        targets.check_plugin(t)
    job = _job(args, overrides)
    plans, failed = [], []
    for t in chosen:
        plan = report.make_plan(job, t, search=args.search, fraction=args.mem_fraction, margin=args.margin)
        plans.append(plan)
        print(report.table(plan), flush=True)
        print()
        if args.search and plan["largest_fitting"] is None:
            failed.append(plan)
    if args.json:
        Path(args.json).write_text(json.dumps({"plans": plans}, indent=2) + "\n")
    if failed:
        p = failed[0]
        raise UserError(f"the step does not fit on {p['target']['name']} even at micro-batch "
                        f"{p['next_size']['micro_batch']} ({p['next_size']['total_gib']:.2f} GiB per device, "
                        f"{p['usable_gib']:.2f} usable); try {_advice(p)}")
    return 0
