"""Bad input for convert, finetune, classify and chat: the rest of the table in test_bad_inputs.py, run by
the same harness (bad_input_support.check_case) on the same shared run and model."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
from bad_input_support import TINY_RECIPE, Case, _dangling_link, check_case


def _shards(e, *extra, name="out"):
    """`jaxgpt prepare` of the shared corpus into tmp/<name> (one worker, small shards)."""
    return ["prepare", *extra, "--out", str(e.tmp / name), "--workers", "1", "--shard-tokens", "500"]


def _jsonl(e, name, lines):
    return str(e.file(f"src/{name}", "".join(lines)).parent)


def _gz_cut(e):
    path = e.tmp / "src" / "d.jsonl.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(200))
    path.write_bytes(path.read_bytes()[:300])
    return str(path.parent)


def _parquet(e):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = e.tmp / "src" / "d.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"body": ["some text"] * 3}), path)
    return path.parent


def _prepared_then(e, argv, *first):
    """Prepare once (this writes into tmp/out), then return `argv`: the case is the second command."""
    from jaxgpt.cli.main import main

    for name in ("a.txt", "b.txt", "c.txt"):
        e.file(f"src/{name}", e.base.corpus.read_text())
    assert main(_shards(e, str(e.tmp / "src"), *first)) == 0
    return argv


_HELD = []  # sockets kept open while their case runs


def _taken_port(e) -> int:
    """A port this process listens on (so `serve` cannot)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    _HELD.append(sock)
    return sock.getsockname()[1]


def _two_tokenizers(e):
    from jaxgpt.cli.main import main

    for name in ("a.txt", "b.txt"):
        e.file(f"src/{name}", e.base.corpus.read_text())
    assert main(_shards(e, str(e.tmp / "src"), "--part", "1/2")) == 0
    assert main(_shards(e, str(e.tmp / "src"), "--part", "2/2", "--tokenizer", "char")) == 0
    return ["prepare", "--merge", "--out", str(e.tmp / "out")]

CASES = [
    # --- convert ---------------------------------------------------------------------------------------
    Case("convert-missing-source", "jaxgpt",
         lambda e: ["convert", str(e.tmp / "gpt2"), str(e.tmp / "out")], "gpt2 does not exist"),
    Case("convert-existing-destination", "jaxgpt",
         lambda e: ["convert", str(e.base.bpe), str(e.file("out/keep.txt", "mine").parent)],
         "already exists; choose a new destination or pass --overwrite"),
    Case("convert-over-a-training-run", "jaxgpt",
         lambda e: ["convert", str(e.base.bpe), str(e.run_copy()), "--overwrite"], "is not an earlier jaxgpt output"),
    Case("convert-to-a-symlink", "jaxgpt",
         lambda e: ["convert", str(e.base.bpe), str(_dangling_link(e, "out")), "--overwrite"],
         "is a symbolic link; give the folder itself"),
    Case("convert-unknown-format", "jaxgpt",
         lambda e: ["convert", str(e.base.bpe), str(e.tmp / "out"), "--to", "onnx"],
         "argument --to: invalid choice: 'onnx'"),

    # --- prepare SOURCE... --out DIR: corpus-scale shards ---------------------------------------------------
    Case("prepare-shards-truncated-gzip", "jaxgpt", lambda e: _shards(e, _gz_cut(e)),
         "d.jsonl.gz is damaged or truncated after line"),
    Case("prepare-shards-corrupt-zstd", "jaxgpt",
         lambda e: _shards(e, str(e.file("src/d.jsonl.zst", b"\x28\xb5\x2f\xfd" + b"\x00junk" * 50).parent)),
         "d.jsonl.zst is damaged or truncated after line 0"),
    Case("prepare-shards-line-not-json", "jaxgpt",
         lambda e: _shards(e, _jsonl(e, "d.jsonl", ['{"text": "fine"}\n', '{"text": "cut\n'])),
         "d.jsonl:2 is not JSON"),
    Case("prepare-shards-line-without-the-field", "jaxgpt",
         lambda e: _shards(e, _jsonl(e, "d.jsonl", ['{"body": "no text here"}\n'])),
         "d.jsonl:1 has no text field 'text'; set --text-field or pass --skip-bad"),
    Case("prepare-shards-parquet-without-the-column", "jaxgpt",
         lambda e: _shards(e, str(_parquet(e))), "has no column 'text' (its columns: body)"),
    Case("prepare-shards-empty-source", "jaxgpt", lambda e: _shards(e, _jsonl(e, "d.jsonl", ["\n", "  \n"])),
         "has no documents"),
    Case("prepare-shards-no-corpus-files", "jaxgpt", lambda e: _shards(e, str(e.file("src/notes.md", "# hi").parent)),
         "no .txt, .jsonl, .jsonl.gz, .jsonl.zst, .parquet files in"),
    Case("prepare-shards-out-holds-another-dataset", "jaxgpt",
         lambda e: _prepared_then(e, _shards(e, str(e.tmp / "src")), "--val-fraction", "0.5"),
         "holds a prepared dataset with other settings or inputs; pass --overwrite", new_ok=("out", "src")),
    Case("prepare-shards-out-holds-other-files", "jaxgpt",
         lambda e: (e.file("out/notes.txt", "mine"), _shards(e, str(e.base.corpus)))[1],
         "holds files that are not a jaxgpt dataset (notes.txt)"),
    Case("prepare-shards-parts-with-different-tokenizers", "jaxgpt", _two_tokenizers,
         "were prepared with different tokenizers (part 1: gpt2, part 2: char)", new_ok=("out", "src")),
    Case("prepare-shards-part-out-of-range", "jaxgpt", lambda e: _shards(e, str(e.base.corpus), "--part", "3/2"),
         "--part '3/2' must be I/N with 1 <= I <= N"),
    Case("prepare-shards-more-parts-than-files", "jaxgpt", lambda e: _shards(e, str(e.base.corpus), "--part", "2/2"),
         "--part 2/2 has no input files: there are 1 files for 2 parts"),
    Case("prepare-shards-merge-missing-part", "jaxgpt",
         lambda e: _prepared_then(e, ["prepare", "--merge", "--out", str(e.tmp / "out")], "--part", "2/3"),
         "holds parts [2] of 3; prepare part(s) [1, 3]", new_ok=("out", "src")),

    # --- eval ----------------------------------------------------------------------------------------------
    Case("eval-hellaswag-line-without-endings", "jaxgpt",
         lambda e: ["eval", "hellaswag", str(e.base.bpe), "--data", str(e.file("hs.jsonl", '{"ctx": "A man", '
                                                                              '"label": 0, "endings": ["a", "b"]}\n{"ctx": "x", "label": 1}\n'))],
         "hs.jsonl:2 lacks the field 'endings'"),
    Case("eval-hellaswag-label-out-of-range", "jaxgpt",
         lambda e: ["eval", "hellaswag", str(e.base.bpe), "--data",
                    str(e.file("hs.jsonl", '{"ctx": "A man", "label": 4, "endings": ["a", "b", "c", "d"]}\n'))],
         "hs.jsonl:1 has label 4 but 4 endings"),
    Case("eval-hellaswag-not-json", "jaxgpt",
         lambda e: ["eval", "hellaswag", str(e.base.bpe), "--data", str(e.file("hs.jsonl", "ctx,label\n"))],
         "hs.jsonl:1 is not JSON"),
    Case("eval-hellaswag-empty", "jaxgpt",
         lambda e: ["eval", "hellaswag", str(e.base.bpe), "--data", str(e.file("hs.jsonl", "\n"))], "holds no examples"),
    Case("eval-loss-tokenizer-mismatch", "jaxgpt",
         lambda e: ["eval", "loss", str(e.base.run), "--data", str(_prepared_then(e, e.tmp / "out"))],
         "was tokenized with gpt2, the model with char", new_ok=("out", "src")),
    Case("eval-loss-stride-above-the-block", "jaxgpt",
         lambda e: ["eval", "loss", str(e.base.bpe), "--data", str(e.base.corpus), "--stride", "100",
                    "--block-size", "32"], "--stride must be between 1 and the block size 32"),
    Case("eval-loss-existing-results-file", "jaxgpt",
         lambda e: ["eval", "loss", str(e.base.bpe), "--data", str(e.base.corpus), "--max-tokens", "40",
                    "--out", str(e.file("r.json", "{}"))], "r.json already exists; choose another --out"),

    # --- tokenizer train ---------------------------------------------------------------------------------
    Case("tokenizer-train-vocabulary-too-small", "jaxgpt",
         lambda e: ["tokenizer", "train", str(e.base.corpus), "--vocab-size", "100", "--out", str(e.tmp / "t")],
         "--vocab-size must be at least 258"),
    Case("tokenizer-train-missing-source", "jaxgpt",
         lambda e: ["tokenizer", "train", str(e.tmp / "nope.txt"), "--vocab-size", "300", "--out", str(e.tmp / "t")],
         "nope.txt' does not exist"),
    Case("tokenizer-train-existing-output", "jaxgpt",
         lambda e: ["tokenizer", "train", str(e.base.corpus), "--vocab-size", "300", "--out",
                    str(e.file("t/tokenizer.json", "{}").parent)], "tokenizer.json already exists"),

    # --- finetune classify -----------------------------------------------------------------------------
    Case("finetune-classify-csv-without-the-columns", "jaxgpt",
         lambda e: e.finetune("classify", "--data", str(e.file("d.csv", "id,kind,body\n1,spam,win\n2,ham,hi\n"))),
         "has no columns 'label' and 'text'"),
    Case("finetune-classify-one-class", "jaxgpt",
         lambda e: e.finetune("classify", "--data",
                              str(e.file("d.csv", "label,text\n" + "".join(f"ham,hello {i}\n" for i in range(20))))),
         "only one class ('ham')"),
    Case("finetune-classify-empty-text", "jaxgpt",
         lambda e: e.finetune("classify", "--data", str(e.file("d.csv", "label,text\nspam,win now\nham,\n"))),
         "line 3 has an empty text"),
    Case("finetune-classify-text-outside-char-vocabulary", "jaxgpt",
         lambda e: e.finetune("classify", "--data", str(e.file("d.csv", "label,text\n" + "".join(
             f"{'a' if i % 2 else 'b'},Zebra {i}\n" for i in range(20)))), model=e.base.run),
         "characters that the model in"),
    Case("finetune-classify-no-examples", "jaxgpt",
         lambda e: e.finetune("classify", "--per-class", "0"), "--per-class must be positive"),
    Case("finetune-classify-epochs-not-a-number", "jaxgpt",
         lambda e: e.finetune("classify", "--epochs", "two"),
         "argument --epochs: invalid int value: 'two'"),

    # --- finetune instruct -----------------------------------------------------------------------------
    Case("finetune-instruct-json-object-not-list", "jaxgpt",
         lambda e: e.finetune("instruct", "--data", str(e.file("d.json", json.dumps(
             {"examples": [{"instruction": "a", "output": "b"}]}, indent=2)))),
         "holds one JSON object, not a list of examples"),
    Case("finetune-instruct-list-of-strings", "jaxgpt",
         lambda e: e.finetune("instruct", "--data", str(e.file("d.json", '["say hi", "say bye"]'))),
         "example 0 is not an object"),
    Case("finetune-instruct-lacking-output", "jaxgpt",
         lambda e: e.finetune("instruct", "--data", str(e.file("d.jsonl", '{"instruction": "a", "output": "b"}\n'
                                                                '{"instruction": "c", "response": "d"}\n'))),
         "example 1 lacks a text field 'output'"),
    Case("finetune-instruct-zero-new-tokens", "jaxgpt",
         lambda e: e.finetune("instruct", "--max-new-tokens", "0"), "--max-new-tokens must be at least 1"),
    Case("finetune-instruct-char-model", "jaxgpt",
         lambda e: e.finetune("instruct", "--n-tasks", "40", model=e.base.run), "which has no <|endoftext|>"),
    Case("finetune-instruct-out-dir-is-someone-elses", "jaxgpt",
         lambda e: e.finetune("instruct", "--n-tasks", "40", out=e.file("mine/notes.txt", "keep").parent),
         "already exists and is not a jaxgpt finetune"),
    Case("finetune-instruct-grad-accum-does-not-divide", "jaxgpt",
         lambda e: e.finetune("instruct", "--batch-size", "8", "--grad-accum", "3"),
         "--batch-size (8) must be divisible by --grad-accum (3)"),
    Case("finetune-instruct-mesh-larger-than-devices", "jaxgpt",
         lambda e: e.finetune("instruct", "--n-tasks", "40", "--mesh.data=4"), "mesh data=4 x fsdp=1 x tensor=1 has 4"),

    # --- finetune dpo ----------------------------------------------------------------------------------
    Case("finetune-dpo-pair-without-rejected", "jaxgpt",
         lambda e: e.finetune("dpo", "--data", str(e.file("p.jsonl", '{"prompt": "a", "chosen": "b"}\n'))),
         "example 0 lacks a text field 'rejected'"),
    Case("finetune-dpo-chosen-equals-rejected", "jaxgpt",
         lambda e: e.finetune("dpo", "--data", str(e.file("p.json", '[{"instruction": "a", "chosen": "b", '
                                                                   '"rejected": "b"}]'))),
         "has the same chosen and rejected response"),
    Case("finetune-dpo-empty-file", "jaxgpt",
         lambda e: e.finetune("dpo", "--data", str(e.file("p.json", ""))), "must hold a non-empty list"),
    Case("finetune-dpo-negative-beta", "jaxgpt",
         lambda e: e.finetune("dpo", "--beta", "-1"), "--beta must be positive"),

    # --- classify --------------------------------------------------------------------------------------
    Case("classify-ckpt-not-a-classifier", "jaxgpt",
         lambda e: ["classify", "--ckpt", str(e.base.run), "some text"], "is not a classifier (it holds pretrain)"),
    Case("classify-ckpt-missing", "jaxgpt",
         lambda e: ["classify", "--ckpt", str(e.tmp / "nope"), "some text"], "nope does not exist or is not a folder"),
    Case("classify-ckpt-without-checkpoints", "jaxgpt",
         lambda e: (shutil.copytree(e.base.bpe, e.tmp / "clf"), shutil.rmtree(e.tmp / "clf" / "checkpoints"),
                    e.file("clf/checkpoints/notes.txt", "x"), ["classify", "--ckpt", str(e.tmp / "clf"), "hi"])[3],
         "holds no checkpoint"),
    Case("classify-damaged-task-json", "jaxgpt",
         lambda e: (shutil.copytree(e.base.bpe, e.tmp / "clf"), e.file("clf/task.json", "{labels"),
                    ["classify", "--ckpt", str(e.tmp / "clf"), "some text"])[2],
         "task.json is damaged or unreadable"),
    Case("classify-task-json-without-labels", "jaxgpt",
         lambda e: (shutil.copytree(e.base.bpe, e.tmp / "clf"),
                    e.file("clf/task.json", '{"task": "classify", "labels": ["only"], "max_length": 8}'),
                    ["classify", "--ckpt", str(e.tmp / "clf"), "some text"])[2],
         "task.json is damaged (labels must be two or more names"),

    # --- chat ------------------------------------------------------------------------------------------
    Case("chat-char-model", "jaxgpt",
         lambda e: ["chat", str(e.base.run), "Say hi."], "has no tokenizer with an end-of-text token"),
    Case("chat-zero-new-tokens", "jaxgpt",
         lambda e: ["chat", str(e.base.bpe), "Say hi.", "--max-new-tokens", "0"],
         "--max-new-tokens must be at least 1"),
    Case("chat-missing-model", "jaxgpt",
         lambda e: ["chat", str(e.tmp / "nope"), "Say hi."], "is not a directory"),

    # --- serve -----------------------------------------------------------------------------------------
    Case("serve-missing-model", "jaxgpt", lambda e: ["serve", str(e.tmp / "nope")], "does not exist; pass a model"),
    Case("serve-zero-slots", "jaxgpt", lambda e: ["serve", str(e.base.bpe), "--slots", "0"],
         "--slots must be at least 1"),
    Case("serve-port-taken", "jaxgpt", lambda e: ["serve", str(e.base.bpe), "--port", str(_taken_port(e))],
         "choose another --port"),
    Case("plan-unknown-target", "jaxgpt", lambda e: ["plan", "--config", TINY_RECIPE, "--target", "h999"],
         "unknown target 'h999'; choose one of h100"),
    Case("plan-json-exists", "jaxgpt",
         lambda e: ["plan", "--config", TINY_RECIPE, "--target", "h100", "--json", str(e.file("plan.json", "{}"))],
         "already exists; choose another --json or pass --overwrite"),
    Case("plan-nothing-fits", "jaxgpt",
         lambda e: ["plan", "--config", TINY_RECIPE, "--data.tokenizer=gpt2", "--target", "h100", "--mem-fraction",
                    "0.00001"], "does not fit on h100 even at micro-batch 1"),
    Case("plan-bad-override", "jaxgpt", lambda e: ["plan", "--config", TINY_RECIPE, "--target", "h100", "stray"],
         "cannot read argument 'stray'"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, base, tmp_path, capfd):
    check_case(case, base, tmp_path, capfd)
