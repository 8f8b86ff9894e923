"""Command-line entry points: `python train.py` and the `jaxgpt` command (train, sample, prepare, convert,
finetune, classify, chat).

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

    from jaxgpt.config import check_seed
    from jaxgpt.loader import load
    from jaxgpt.model import GPT
    from jaxgpt.sampling import check_settings, generate
    from jaxgpt.tokenizer import describe_characters, unknown_characters

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
    ids = tokenizer.encode(prompt)
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


def _part(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise UserError(f"--part {text!r} must be I/N with 1 <= I <= N, e.g. --part 2/8")
    return int(i), int(n)


def _prepare(args: argparse.Namespace) -> int:
    if args.merge:
        from jaxgpt.shards import merge_parts

        if not args.out:
            raise UserError("--merge needs --out, the folder the parts were prepared into")
        m = merge_parts(args.out)
        print(f"{args.out}: {m['parts']} parts merged: {m['tokens']['train']:,} train and {m['tokens']['val']:,} "
              f"validation tokens in {len(m['shards'])} shards")
        return 0
    if not args.sources:  # the single-file cache that train.py fills by itself
        from jaxgpt.data import prepare

        p = prepare(args.source, args.tokenizer or "char", args.cache_dir,
                    0.1 if args.val_fraction is None else args.val_fraction)
        print(f"{p.folder}: {p.train_tokens} train and {p.val_tokens} validation tokens ({p.dtype})")
        return 0
    from jaxgpt.shards import prepare_shards, vocabulary_tokenizer
    from jaxgpt.tokenizer import KINDS, get_tokenizer

    if not args.out:
        raise UserError("give --out, the folder to write the shards into (jaxgpt prepare SOURCE... --out DIR)")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    kind, part = args.tokenizer or "gpt2", _part(args.part)
    if kind in ("char", "simple"):
        tok = vocabulary_tokenizer(kind, args.sources, args.text_field, args.skip_bad, args.workers, part)
    elif kind in KINDS or Path(kind).is_dir():
        tok = get_tokenizer(kind)
    else:
        raise UserError(f"unknown tokenizer {kind!r}; choose gpt2, char, simple or a `jaxgpt tokenizer train` folder")
    m = prepare_shards(args.sources, args.out, tok.meta(), args.text_field, args.workers, args.shard_tokens,
                       0.0005 if args.val_fraction is None else args.val_fraction, part, args.overwrite,
                       args.skip_bad, args.piece_bytes)
    print(f"{args.out}: {m['documents']['train']:,} train and {m['documents']['val']:,} validation documents, "
          f"{m['tokens']['train']:,} and {m['tokens']['val']:,} tokens in {len(m['shards'])} shards ({m['dtype']})"
          + (f"; {m['documents']['skipped']} bad lines skipped" if m["documents"]["skipped"] else ""))
    return 0


def _tokenizer_train(args: argparse.Namespace) -> int:
    from jaxgpt import corpus
    from jaxgpt.bpe import train_bpe

    files = corpus.find_files(args.sources)

    def documents():
        for piece in corpus.pieces(files):
            yield from (t for t in corpus.documents(piece, args.text_field, skip_bad=False) if t and t.strip())

    tok = train_bpe(documents(), args.vocab_size, args.out, args.min_frequency, args.overwrite)
    print(f"{args.out}/tokenizer.json: a byte-level BPE of {tok.vocab_size} tokens (<|endoftext|> = {tok.eot_id}); "
          f"use it with --data.tokenizer={args.out} or `jaxgpt prepare ... --tokenizer {args.out}`")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from jaxgpt.convert import convert

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
    from jaxgpt.finetune import common

    module, cls = _recipe(args.recipe)
    module.finetune(common.from_arguments(cls, args))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from jaxgpt import evaluation
    from jaxgpt.loader import load
    from jaxgpt.model import GPT

    if args.batch_size < 1 or getattr(args, "limit", 0) < 0:
        raise UserError("--batch-size must be at least 1 and --limit not negative")
    if args.out and Path(args.out).exists() and not args.overwrite:  # refused before any work
        raise UserError(f"{args.out} already exists; choose another --out or pass --overwrite")
    model = load(args.model, args.step)
    gpt, params = GPT(model.config), model.gpt_params
    head = {"model": str(args.model), "step": model.step, "data": str(args.data)}
    if args.what == "loss":
        shards, where = evaluation.read_corpus(args.data, args.split, model.tokenizer_meta)
        r = evaluation.corpus_loss(gpt, params, shards, args.block_size, args.stride, args.batch_size,
                                   args.max_tokens, evaluation.progress_line)
        results = {**head, "split": args.split, **r}
        print(f"{where}: loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f} over {r['tokens_scored']:,} tokens "
              f"in {r['windows']:,} windows of {r['block_size']} ({r['window_rule']})")
    else:
        examples = evaluation.read_hellaswag(args.data, args.limit)
        r = evaluation.hellaswag(gpt, params, model.tokenizer("score HellaSwag's text"), examples, args.batch_size,
                                 evaluation.progress_line)
        results = {**head, **r}
        print(f"hellaswag: {r['n']} examples: acc {r['acc']:.4f}, acc_norm {r['acc_norm']:.4f} (per token, as "
              f"build-nanogpt and llm.c), acc_norm_char {r['acc_norm_char']:.4f} (per character, as "
              "lm-evaluation-harness)")
    evaluation.write_results(args.out, results, args.overwrite)
    return 0


def _classify(args: argparse.Namespace) -> int:
    from jaxgpt.finetune.classify import classify

    for text, (label, prob) in zip(args.texts, classify(args.ckpt, args.texts)):
        print(f"{label}\t{prob:.3f}\t{text}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from jaxgpt.finetune.instruct import format_prompt, respond
    from jaxgpt.loader import load

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not Path(args.model_dir).is_dir():
        raise UserError(f"{args.model_dir} is not a directory; pass the --out-dir of `jaxgpt finetune instruct`")
    model = load(args.model_dir)
    if model.tokenizer_meta is None or model.tokenizer().eot_id is None:
        raise UserError(f"{args.model_dir} has no tokenizer with <|endoftext|>; chat needs an instruction-finetuned "
                        "GPT-2 BPE model from `jaxgpt finetune instruct`")
    tokenizer = model.tokenizer()
    interactive = not args.instruction
    lines = [" ".join(args.instruction)] if args.instruction else iter(lambda: input("> "), None)
    try:
        for line in lines:
            if not line.strip():
                break
            entry = {"instruction": line.strip(), "input": args.input}
            print(respond(model.config, model.gpt_params, tokenizer, [format_prompt(entry)], args.max_new_tokens)[0])
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

    p = sub.add_parser("prepare", help="tokenize a corpus: SOURCE... --out DIR writes token shards on every core; "
                       "without sources, --source fills train.py's data cache")
    p.add_argument("sources", nargs="*", help="files, folders or globs of .txt, .jsonl, .jsonl.gz, .jsonl.zst, .parquet")
    p.add_argument("--out", default=None, help="the folder for the shards and manifest.json")
    p.add_argument("--tokenizer", default=None, help="gpt2 (default for shards), char (default for the cache), "
                   "simple, or a folder from `jaxgpt tokenizer train`")
    p.add_argument("--text-field", default="text", help="the JSON field / Parquet column holding the text")
    p.add_argument("--workers", type=int, default=None, help="tokenizing processes (default: every core)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard")
    p.add_argument("--val-fraction", type=float, default=None, help="documents held out for validation, by "
                   "a hash of each document (default 0.0005; for the cache: the end of every document, 0.1)")
    p.add_argument("--part", default="1/1", help="I/N: prepare the I-th of N disjoint shares of the input files")
    p.add_argument("--merge", action="store_true", help="join the parts prepared into --out (manifest.json)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset with other settings in --out")
    p.add_argument("--skip-bad", action="store_true", help="count and skip JSON lines that are bad or lack the field")
    p.add_argument("--piece-bytes", type=int, default=1 << 22, help="input bytes per unit of work (and of resumption)")
    p.add_argument("--source", default="shakespeare", help="(the cache) 'shakespeare', a text file or a folder of .txt")
    p.add_argument("--cache-dir", default="data", help="(the cache) where train.py looks for it")
    p.set_defaults(fn=_prepare)

    t = sub.add_parser("tokenizer", help="train your own byte-level BPE tokenizer")
    tsub = t.add_subparsers(dest="action", required=True)
    tt = tsub.add_parser("train", help="train a byte-level BPE with <|endoftext|> on a corpus (needs jaxgpt[bpe])")
    tt.add_argument("sources", nargs="+", help="files, folders or globs of .txt, .jsonl(.gz/.zst), .parquet")
    tt.add_argument("--vocab-size", type=int, required=True)
    tt.add_argument("--out", required=True, help="the folder for tokenizer.json")
    tt.add_argument("--text-field", default="text")
    tt.add_argument("--min-frequency", type=int, default=2, help="pairs seen fewer times are not merged")
    tt.add_argument("--overwrite", action="store_true")
    tt.set_defaults(fn=_tokenizer_train)

    c = sub.add_parser("convert", help="convert GPT-2 weights: OpenAI or Hugging Face -> jaxgpt, jaxgpt -> HF")
    c.add_argument("src", help="a Hugging Face GPT-2 directory, OpenAI's release directory, or a jaxgpt run")
    c.add_argument("dst", help="the new directory to write")
    c.add_argument("--to", choices=("jaxgpt", "hf"), default=None,
                   help="output format (default: jaxgpt, or hf when SRC is a jaxgpt run)")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it is an earlier output")
    c.add_argument("--step", type=int, default=None, help="checkpoint step of a jaxgpt SRC (default: latest)")
    c.set_defaults(fn=_convert)

    from jaxgpt.finetune import common

    f = sub.add_parser("finetune", help="finetune a pretrained GPT: classify (text labels), instruct (Alpaca) "
                       "or dpo (preference pairs)")
    recipes = f.add_subparsers(dest="recipe", required=True)
    for name, (_, _, text) in RECIPES.items():
        r = recipes.add_parser(name, help=text)
        common.add_arguments(r, _recipe(name)[1])
        r.set_defaults(fn=_finetune)

    e = sub.add_parser("eval", help="evaluate a model: its loss on a corpus, or HellaSwag")
    what = e.add_subparsers(dest="what", required=True)
    el = what.add_parser("loss", help="mean loss and perplexity over a prepared dataset or a text file")
    eh = what.add_parser("hellaswag", help="HellaSwag accuracy from its official JSONL (e.g. hellaswag_val.jsonl)")
    for q in (el, eh):
        q.add_argument("model", help="any model directory: a run, a converted model, HF or OpenAI weights")
        q.add_argument("--data", required=True)
        q.add_argument("--step", type=int, default=None, help="checkpoint step of a run (default: latest)")
        q.add_argument("--out", default=None, help="write the results as JSON")
        q.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
        q.set_defaults(fn=_eval)
    el.add_argument("--split", default="val", help="train or val (of a prepared dataset)")
    el.add_argument("--max-tokens", type=int, default=0, help="score only the first N targets (0: all)")
    el.add_argument("--block-size", type=int, default=None, help="window length (default: the model's context)")
    el.add_argument("--stride", type=int, default=None, help="windows every N tokens, scoring only their "
                    "last N targets (default: non-overlapping windows)")
    el.add_argument("--batch-size", type=int, default=8)
    eh.add_argument("--limit", type=int, default=0, help="only the first N examples (0: all)")
    eh.add_argument("--batch-size", type=int, default=16, help="endings scored at once")

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
