"""Command-line entry points: `python train.py` and the `jaxgpt` command (train, sample, prepare, convert,
finetune, classify, chat, plan).

Every command turns a `UserError` into one line on stderr and exit status 2, so no traceback reaches
the user for a mistake they can fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxgpt.cli.help import add_arguments, describe, from_arguments, table
from jaxgpt.errors import UserError


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


def _train(argv: list[str]) -> int:
    from jaxgpt import recipe
    from jaxgpt.config import Config
    from jaxgpt.train.pretrain import train

    parser = _Parser(
        prog="train.py", description="Pretrain a GPT. Any config field can be overridden: --train.max_steps=100",
        epilog="settings (each overrides the recipe's value; defaults are the dataclasses', a recipe sets its own):\n"
               + table(describe(Config)).replace("%", "%%"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=None, help=f"recipe file (default {recipe.DEFAULT_CONFIG})")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--") or "=" not in o]
    if bad:
        raise UserError(f"cannot read argument {bad[0]!r}; overrides look like --train.max_steps=100")
    cfg = recipe.load_config_file(args.config or recipe.default_config_path())
    cfg = recipe.apply_overrides(cfg, overrides)
    train(cfg)
    return 0


def main_train(argv: list[str]) -> int:
    return _guarded(_train, argv)


def _sample(args: argparse.Namespace) -> int:
    import jax

    from jaxgpt.config import check_seed
    from jaxgpt.model.gpt import GPT
    from jaxgpt.model.sampling import check_settings, generate
    from jaxgpt.store.loader import load
    from jaxgpt.tokenizer.base import describe_characters
    from jaxgpt.tokenizer.kinds import unknown_characters

    check_settings(args.temperature, args.top_k, args.top_p)
    if args.num_tokens < 1 or args.num_samples < 1:
        raise UserError("--num-tokens and --num-samples must be at least 1")
    model = load(args.run_dir, args.step)  # Hugging Face or OpenAI weights are read directly, unconverted
    tokenizer = model.tokenizer()
    try:
        prompt = args.prompt.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise UserError(f"--prompt has a broken escape sequence ({e.reason}); write a backslash as \\\\") from None
    check_seed("--seed", args.seed)
    unknown = unknown_characters(tokenizer, [prompt])
    if unknown:
        raise UserError(f"the prompt has characters this model does not know: {describe_characters(unknown)}; "
                        f"this character-level model knows only the {tokenizer.vocab_size} characters of its "
                        "training text, so write the --prompt with those")
    # A Hugging Face tokenizer adds what its model expects before a text (Llama 3: <|begin_of_text|>), as there.
    ids = tokenizer.encode(prompt, add_special_tokens=True) if tokenizer.name == "hf" else tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt encodes to no tokens; give a non-empty --prompt")
    out = generate(GPT(model.config), model.gpt_params, [ids] * args.num_samples, args.num_tokens,
                   key=jax.random.key(args.seed), temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, eot_id=tokenizer.eot_id)
    for i, row in enumerate(out):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} (step {model.step}) ---")
        print(tokenizer.decode(row.tolist()))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from jaxgpt.store.loader import convert_model as convert

    print(convert(args.src, args.dst, args.to, args.overwrite, args.step))
    return 0


RECIPES = {  # name -> (module, config class, help)
    "classify": ("classify", "ClassifyConfig", "a text classifier from a CSV/TSV file (default: comedy vs tragedy "
                 "passages)"),
    "instruct": ("instruct", "InstructConfig", "instruction following from Alpaca JSON/JSONL (default: a "
                 "generated, verifiable instruction set)"),
    "dpo": ("dpo", "DPOConfig", "preference tuning (DPO) from JSON/JSONL pairs (default: pairs from the "
            "generated instruction set)"),
}


def _recipe(name: str):
    import importlib

    module_name, cls_name, _ = RECIPES[name]
    module = importlib.import_module(f"jaxgpt.finetune.{module_name}")
    return module, getattr(module, cls_name)


def _finetune(args: argparse.Namespace) -> int:

    module, cls = _recipe(args.recipe)
    module.finetune(from_arguments(cls, args))
    return 0


def _classify(args: argparse.Namespace) -> int:
    from jaxgpt.finetune.classify import classify

    for text, (label, prob) in zip(args.texts, classify(args.ckpt, args.texts)):
        print(f"{label}\t{prob:.3f}\t{text}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from jaxgpt.finetune.instruct import chat_prompt, format_prompt, respond
    from jaxgpt.store.loader import load

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not Path(args.model_dir).is_dir():
        raise UserError(f"{args.model_dir} is not a directory; pass the --out-dir of `jaxgpt finetune instruct` or "
                        "a chat model with a chat template (Qwen3, Llama 3)")
    model = load(args.model_dir)
    if model.tokenizer_meta is None or model.tokenizer().eot_id is None:
        raise UserError(f"{args.model_dir} has no tokenizer with an end-of-text token; chat needs an instruction-"
                        "finetuned model from `jaxgpt finetune instruct` or a chat model with its tokenizer")
    tokenizer = model.tokenizer()
    alpaca = bool(model.task and model.task.get("task") == "instruct")
    interactive = not args.instruction
    lines = [" ".join(args.instruction)] if args.instruction else iter(lambda: input("> "), None)
    history: list[dict[str, str]] = []  # a chat template sees the whole conversation; Alpaca one instruction
    try:
        for line in lines:
            if not line.strip():
                break
            history.append({"role": "user", "content": line.strip()})
            prompt = (format_prompt({"instruction": line.strip(), "input": args.input}) if args.input
                      else chat_prompt(tokenizer, history, alpaca))
            reply = respond(model.config, model.gpt_params, tokenizer, [prompt], args.max_new_tokens)[0]
            history.append({"role": "assistant", "content": reply})
            print(reply)
    except EOFError:
        if interactive:
            print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxgpt", description="GPT-2 in JAX: train, sample, prepare data, evaluate, convert weights, finetune.")
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

    c = sub.add_parser("convert", help="convert GPT-2 weights: OpenAI or Hugging Face -> jaxgpt, jaxgpt -> HF")
    c.add_argument("src", help="a Hugging Face GPT-2 directory, OpenAI's release directory, or a jaxgpt run")
    c.add_argument("dst", help="the new directory to write")
    c.add_argument("--to", choices=("jaxgpt", "hf"), default=None,
                   help="output format (default: jaxgpt, or hf when SRC is a jaxgpt run)")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it is an earlier output")
    c.add_argument("--step", type=int, default=None, help="checkpoint step of a jaxgpt SRC (default: latest)")
    c.set_defaults(fn=_convert)

    from jaxgpt.cli import data as cli_data

    cli_data.add_parsers(sub)

    from jaxgpt.cli import plan as cli_plan

    cli_plan.add_parser(sub)

    from jaxgpt.cli import serve as cli_serve

    cli_serve.add_parser(sub)

    f = sub.add_parser("finetune", help="finetune a pretrained GPT: classify (text labels), instruct (Alpaca) "
                       "or dpo (preference pairs)")
    recipes = f.add_subparsers(dest="recipe", required=True)
    for name, (_, _, text) in RECIPES.items():
        r = recipes.add_parser(name, help=text)
        add_arguments(r, _recipe(name)[1])
        r.set_defaults(fn=_finetune)

    k = sub.add_parser("classify", help="label texts with a classifier from `jaxgpt finetune classify`")
    k.add_argument("--ckpt", required=True, help="the classifier's directory")
    k.add_argument("texts", nargs="+", help="texts to classify")
    k.set_defaults(fn=_classify)

    h = sub.add_parser("chat", help="talk to a model from `jaxgpt finetune instruct` (Alpaca prompts) or a chat "
                       "model with a chat template (Qwen3, Llama 3 Instruct)")
    h.add_argument("model_dir")
    h.add_argument("instruction", nargs="*", help="one instruction (default: read them line by line)")
    h.add_argument("--input", default="", help="the Alpaca 'input' field for the instruction")
    h.add_argument("--max-new-tokens", type=int, default=128)
    h.set_defaults(fn=_chat)
    return parser


def _parse_and_run(argv: list[str]) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)  # a usage mistake raises UserError, reported like any other
    if not getattr(args, "overrides", False):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.fn(args)
    bad = [o for o in rest if not o.startswith("--") or "=" not in o]
    if bad:
        raise UserError(f"cannot read argument {bad[0]!r}; overrides look like --train.batch_size=8")
    return args.fn(args, rest)


def _compile_only() -> None:
    """JAX on the CPU alone: the GPU and TPU compilers are then only used to compile (`jaxgpt plan`)."""
    import os

    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # already imported in this process (a test): set it before any backend starts
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return main_train(argv[1:])
    if argv[:1] == ["plan"]:
        _compile_only()
    return _guarded(_parse_and_run, argv)
