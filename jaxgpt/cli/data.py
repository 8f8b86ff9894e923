"""The `jaxgpt` commands for data and evaluation: prepare, tokenizer train, eval, info.

Registered by `cli.main.build_parser`; every mistake a user can make ends as a one-line UserError there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxgpt.errors import UserError
from jaxgpt.files import write_json
from jaxgpt.report.progress import progress_line


def _part(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise UserError(f"--part {text!r} must be I/N with 1 <= I <= N, e.g. --part 2/8")
    return int(i), int(n)


def _prepare(args: argparse.Namespace) -> int:
    if args.merge:
        from jaxgpt.data.dataset import merge_parts

        if not args.out:
            raise UserError("--merge needs --out, the folder the parts were prepared into")
        m = merge_parts(args.out)
        print(f"{args.out}: {m['parts']} parts merged: {m['tokens']['train']:,} train and {m['tokens']['val']:,} "
              f"validation tokens in {len(m['shards'])} shards")
        return 0
    if not args.sources:  # the single-file cache that train.py fills by itself
        from jaxgpt.data.cache import prepare

        p = prepare(args.source, args.tokenizer or "char", args.cache_dir,
                    0.1 if args.val_fraction is None else args.val_fraction)
        print(f"{p.folder}: {p.train_tokens} train and {p.val_tokens} validation tokens ({p.dtype})")
        return 0
    from jaxgpt.data.shards import prepare_shards, vocabulary_tokenizer
    from jaxgpt.tokenizer.kinds import KINDS, get_tokenizer

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
    from jaxgpt.data import sources
    from jaxgpt.tokenizer.bpe import train_bpe

    files = sources.find_files(args.sources)

    def documents():
        for piece in sources.pieces(files):
            yield from (t for t in sources.documents(piece, args.text_field, skip_bad=False) if t and t.strip())

    tok = train_bpe(documents(), args.vocab_size, args.out, args.min_frequency, args.overwrite)
    print(f"{args.out}/tokenizer.json: a byte-level BPE of {tok.vocab_size} tokens (<|endoftext|> = {tok.eot_id}); "
          f"use it with --data.tokenizer={args.out} or `jaxgpt prepare ... --tokenizer {args.out}`")
    return 0


def _stretched(cfg, args: argparse.Namespace):
    """The model config with `--rope-scaling` applied: the positions of a longer window brought back into
    the range the model trained at (`--rope-factor`, default the window over the model's context)."""
    import dataclasses

    if cfg.position != "rope":
        raise UserError("--rope-scaling stretches rotary positions, and this model learned a table of positions")
    window = args.block_size or cfg.block_size
    factor = args.rope_factor or max(window / cfg.block_size, 1.0)
    if factor < 1:
        raise UserError(f"--rope-factor must be at least 1, got {factor}")
    return dataclasses.replace(cfg, rope_scaling=args.rope_scaling, rope_factor=float(factor),
                               rope_context=cfg.rope_context or cfg.block_size)


def _eval(args: argparse.Namespace) -> int:
    from jaxgpt.eval import corpus
    from jaxgpt.eval import hellaswag as hellaswag_lib
    from jaxgpt.model.gpt import GPT
    from jaxgpt.store.loader import load

    if args.batch_size < 1 or getattr(args, "limit", 0) < 0:
        raise UserError("--batch-size must be at least 1 and --limit not negative")
    if args.out and Path(args.out).exists() and not args.overwrite:  # refused before any work
        raise UserError(f"{args.out} already exists; choose another --out or pass --overwrite")
    model = load(args.model, args.step)
    model_cfg = _stretched(model.config, args) if getattr(args, "rope_scaling", None) else model.config
    gpt, params = GPT(model_cfg), model.gpt_params
    head = {"model": str(args.model), "step": model.step, "data": str(args.data)}
    if model_cfg != model.config:
        head["rope"] = {"scaling": model_cfg.rope_scaling, "factor": model_cfg.rope_factor,
                        "context": model_cfg.rope_context}
    if args.what == "loss":
        shards, where = corpus.read_corpus(args.data, args.split, model.tokenizer_meta)
        r = corpus.corpus_loss(gpt, params, shards, args.block_size, args.stride, args.batch_size,
                                   args.max_tokens, progress_line)
        results = {**head, "split": args.split, **r}
        print(f"{where}: loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f} over {r['tokens_scored']:,} tokens "
              f"in {r['windows']:,} windows of {r['block_size']} ({r['window_rule']})")
    else:
        examples = hellaswag_lib.read_hellaswag(args.data, args.limit)
        r = hellaswag_lib.hellaswag(gpt, params, model.tokenizer("score HellaSwag's text"), examples, args.batch_size,
                                 progress_line)
        results = {**head, **r}
        print(f"hellaswag: {r['n']} examples: acc {r['acc']:.4f}, acc_norm {r['acc_norm']:.4f} (per token, as "
              f"build-nanogpt and llm.c), acc_norm_char {r['acc_norm_char']:.4f} (per character, as "
              "lm-evaluation-harness)")
    write_results(args.out, results, args.overwrite)
    return 0


def _info(args: argparse.Namespace) -> int:
    from jaxgpt.cli.info import report

    print(report())
    return 0


def add_parsers(sub) -> None:
    """The prepare, tokenizer, eval and info commands on the `jaxgpt` parser's subcommands."""
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
    el.add_argument("--rope-scaling", choices=("none", "linear", "llama3"), default=None,
                    help="score a rotary-position model's longer windows with its positions stretched")
    el.add_argument("--rope-factor", type=float, default=0.0,
                    help="how much --rope-scaling stretches (default: --block-size over the model's context)")
    eh.add_argument("--limit", type=int, default=0, help="only the first N examples (0: all)")
    eh.add_argument("--batch-size", type=int, default=16, help="endings scored at once")

    i = sub.add_parser("info", help="what JAX sees: backend, devices, memory, the peak FLOP/s MFU assumes, versions")
    i.set_defaults(fn=_info)


def write_results(path: str | Path | None, results: dict, overwrite: bool) -> None:
    """Write the JSON results; an existing file is kept unless --overwrite."""
    if not path:
        return
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another --out or pass --overwrite")
    write_json(path, results, indent=1)
