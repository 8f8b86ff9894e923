"""Command-line entry points: `python train.py` and the `jaxgpt` command (train, sample, prepare, convert).

Every command turns a `UserError` into one line on stderr and exit status 2, so no traceback reaches
the user for a mistake they can fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxgpt.errors import UserError

DEFAULT_CONFIG = "configs/shakespeare_char.py"


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage mistake is a one-line UserError rather than usage text and an exit."""

    def error(self, message: str):
        raise UserError(f"{message}; see `{self.prog} --help`")


def _guarded(fn, *args) -> int:
    try:
        return fn(*args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _default_config_path() -> Path:
    here = Path(DEFAULT_CONFIG)
    return here if here.is_file() else Path(__file__).resolve().parent.parent / DEFAULT_CONFIG


def _train(argv: list[str]) -> int:
    from jaxgpt import config as config_lib
    from jaxgpt.trainer import train

    parser = _Parser(
        prog="train.py", description="Pretrain a GPT. Any config field can be overridden: --train.max_steps=100",
    )
    parser.add_argument("--config", default=None, help=f"recipe file (default {DEFAULT_CONFIG})")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--") or "=" not in o]
    if bad:
        raise UserError(f"cannot read argument {bad[0]!r}; overrides look like --train.max_steps=100")
    cfg = config_lib.load_config_file(args.config or _default_config_path())
    cfg = config_lib.apply_overrides(cfg, overrides)
    train(cfg)
    return 0


def main_train(argv: list[str]) -> int:
    return _guarded(_train, argv)


def _sample(args: argparse.Namespace) -> int:
    import jax

    from jaxgpt import convert
    from jaxgpt.checkpoint import load_model
    from jaxgpt.model import GPT
    from jaxgpt.sampling import check_settings, generate
    from jaxgpt.tokenizer import describe_characters, tokenizer_from_meta, unknown_characters

    check_settings(args.temperature, args.top_k, args.top_p)
    if args.num_tokens < 1 or args.num_samples < 1:
        raise UserError("--num-tokens and --num-samples must be at least 1")
    if convert.detect(args.run_dir) == convert.JAXGPT:
        cfg, params, tok_meta, step = load_model(args.run_dir, args.step)
        model_cfg = cfg.model
    else:  # Hugging Face or OpenAI weights are read directly, without converting them first
        model_cfg, params = convert.load_pretrained(args.run_dir)
        tok_meta, step = convert.read_tokenizer_meta(args.run_dir), 0
    if tok_meta is None:
        raise UserError(f"{args.run_dir} does not say which tokenizer its model uses (no tokenizer.json), "
                        "so it cannot turn text into tokens")
    tokenizer = tokenizer_from_meta(tok_meta)
    try:
        prompt = args.prompt.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise UserError(f"--prompt has a broken escape sequence ({e.reason}); write a backslash as \\\\") from None
    from jaxgpt.config import check_seed

    check_seed("--seed", args.seed)
    unknown = unknown_characters(tokenizer, [prompt])
    if unknown:
        raise UserError(f"the prompt has characters this model does not know: {describe_characters(unknown)}; "
                        f"this character-level model knows only the {tokenizer.vocab_size} characters of its "
                        "training text, so write the --prompt with those")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt encodes to no tokens; give a non-empty --prompt")
    out = generate(GPT(model_cfg), params, [ids] * args.num_samples, args.num_tokens,
                   key=jax.random.key(args.seed), temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, eot_id=tokenizer.eot_id)
    for i, row in enumerate(out):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} (step {step}) ---")
        print(tokenizer.decode(row.tolist()))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from jaxgpt.data import prepare

    p = prepare(args.source, args.tokenizer, args.cache_dir, args.val_fraction)
    print(f"{p.folder}: {p.train_tokens} train and {p.val_tokens} validation tokens ({p.dtype})")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from jaxgpt.convert import convert

    print(convert(args.src, args.dst, args.to, args.overwrite, args.step))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from jaxgpt.finetune import classify, common, instruct

    module = classify if args.recipe == "classify" else instruct
    cls = classify.ClassifyConfig if args.recipe == "classify" else instruct.InstructConfig
    module.finetune(common.from_arguments(cls, args))
    return 0


def _classify(args: argparse.Namespace) -> int:
    from jaxgpt.finetune.classify import classify

    for text, (label, prob) in zip(args.texts, classify(args.ckpt, args.texts)):
        print(f"{label}\t{prob:.3f}\t{text}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    import jax

    from jaxgpt.checkpoint import load_model
    from jaxgpt.finetune.instruct import respond
    from jaxgpt.tokenizer import tokenizer_from_meta

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    cfg, params, tok_meta, _ = load_model(args.model_dir)
    if tok_meta is None or tokenizer_from_meta(tok_meta).eot_id is None:
        raise UserError(f"{args.model_dir} has no tokenizer with <|endoftext|>; chat needs an instruction-finetuned "
                        "GPT-2 BPE model from `jaxgpt finetune instruct`")
    tokenizer = tokenizer_from_meta(tok_meta)
    interactive = not args.instruction
    lines = [" ".join(args.instruction)] if args.instruction else iter(lambda: input("> "), None)
    try:
        for line in lines:
            if not line.strip():
                break
            entry = {"instruction": line.strip(), "input": args.input}
            print(respond(cfg.model, jax.device_put(params), tokenizer, [entry], args.max_new_tokens)[0])
    except EOFError:
        if interactive:
            print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxgpt", description="GPT-2 in JAX: train, sample, prepare data, convert weights, finetune.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="pretrain (same as python train.py)", add_help=False)

    s = sub.add_parser("sample", help="generate text from a trained run or a pretrained GPT-2 directory")
    s.add_argument("run_dir", help="a run directory written by train.py, a converted model, or a Hugging "
                   "Face / OpenAI GPT-2 directory")
    s.add_argument("--prompt", default="\n", help="text to continue (escapes such as \\n work)")
    s.add_argument("--num-tokens", type=int, default=200)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    s.set_defaults(fn=_sample)

    p = sub.add_parser("prepare", help="tokenize a corpus once into the data cache")
    p.add_argument("--source", default="shakespeare", help="'shakespeare', a text file or a folder of .txt")
    p.add_argument("--tokenizer", default="char", choices=("char", "gpt2", "simple"))
    p.add_argument("--cache-dir", default="data")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.set_defaults(fn=_prepare)

    c = sub.add_parser("convert", help="convert GPT-2 weights: OpenAI or Hugging Face -> jaxgpt, jaxgpt -> HF")
    c.add_argument("src", help="a Hugging Face GPT-2 directory, OpenAI's release directory, or a jaxgpt run")
    c.add_argument("dst", help="the new directory to write")
    c.add_argument("--to", choices=("jaxgpt", "hf"), default=None,
                   help="output format (default: jaxgpt, or hf when SRC is a jaxgpt run)")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it is an earlier output")
    c.add_argument("--step", type=int, default=None, help="checkpoint step of a jaxgpt SRC (default: latest)")
    c.set_defaults(fn=_convert)

    from jaxgpt.finetune import classify, common, instruct

    f = sub.add_parser("finetune", help="finetune a pretrained GPT: classify (text labels) or instruct (Alpaca)")
    recipes = f.add_subparsers(dest="recipe", required=True)
    for name, cls, text in (("classify", classify.ClassifyConfig, "a text classifier from a CSV/TSV file "
                             "(default: comedy vs tragedy passages)"),
                            ("instruct", instruct.InstructConfig, "instruction following from Alpaca JSON/JSONL "
                             "(default: a generated, verifiable instruction set)")):
        r = recipes.add_parser(name, help=text)
        common.add_arguments(r, cls)
        r.set_defaults(fn=_finetune)

    k = sub.add_parser("classify", help="label texts with a classifier from `jaxgpt finetune classify`")
    k.add_argument("--ckpt", required=True, help="the classifier's directory")
    k.add_argument("texts", nargs="+", help="texts to classify")
    k.set_defaults(fn=_classify)

    h = sub.add_parser("chat", help="answer instructions with a model from `jaxgpt finetune instruct`")
    h.add_argument("model_dir")
    h.add_argument("instruction", nargs="*", help="one instruction (default: read them line by line)")
    h.add_argument("--input", default="", help="the Alpaca 'input' field for the instruction")
    h.add_argument("--max-new-tokens", type=int, default=128)
    h.set_defaults(fn=_chat)
    return parser


def _parse_and_run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)  # a usage mistake raises UserError, reported like any other
    return args.fn(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return main_train(argv[1:])
    return _guarded(_parse_and_run, argv)
