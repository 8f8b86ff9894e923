"""Bad input for convert, finetune, classify and chat: the rest of the table in test_bad_inputs.py, run by
the same harness (bad_input_support.check_case) on the same shared run and model."""

from __future__ import annotations

import json
import shutil

import pytest
from bad_input_support import Case, _dangling_link, check_case

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

    # --- classify --------------------------------------------------------------------------------------
    Case("classify-ckpt-not-a-classifier", "jaxgpt",
         lambda e: ["classify", "--ckpt", str(e.base.run), "some text"], "is not a classifier (no classifier.json)"),
    Case("classify-ckpt-missing", "jaxgpt",
         lambda e: ["classify", "--ckpt", str(e.tmp / "nope"), "some text"], "nope does not exist or is not a folder"),
    Case("classify-ckpt-without-config", "jaxgpt",
         lambda e: ["classify", "--ckpt", str(e.file("clf/classifier.json", '{"labels": ["a", "b"], "max_length": 8}')
                                             .parent), "some text"], "has classifier.json but no config.json"),
    Case("classify-damaged-classifier-json", "jaxgpt",
         lambda e: (shutil.copytree(e.base.bpe, e.tmp / "clf"), e.file("clf/classifier.json", "{labels"),
                    ["classify", "--ckpt", str(e.tmp / "clf"), "some text"])[2],
         "classifier.json is damaged"),

    # --- chat ------------------------------------------------------------------------------------------
    Case("chat-char-model", "jaxgpt",
         lambda e: ["chat", str(e.base.run), "Say hi."], "has no tokenizer with <|endoftext|>"),
    Case("chat-zero-new-tokens", "jaxgpt",
         lambda e: ["chat", str(e.base.bpe), "Say hi.", "--max-new-tokens", "0"],
         "--max-new-tokens must be at least 1"),
    Case("chat-missing-model", "jaxgpt",
         lambda e: ["chat", str(e.tmp / "nope"), "Say hi."], "is not a directory"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, base, tmp_path, capfd):
    check_case(case, base, tmp_path, capfd)
