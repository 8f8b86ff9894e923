"""Bad input, tried systematically: one table of mistakes across every command.

Each case builds its inputs under tmp_path, fingerprints every path there (files by SHA-256, links by
target, folders by name), runs the command in-process and checks what the user would see: exit status 2,
exactly one line on stderr starting with "error: " that names the problem, no traceback anywhere, and
every path that existed before still there and unchanged (the shared inputs of the module too). New
paths are refused too, except where a case says so (the tokenized data cache, which `train` fills
before it can compare the data with a run). The harness is in bad_input_support.py.

The trained run and the GPT-2-vocabulary model are built once per session (the `base` fixture, shared
through conftest.py), outside tmp_path, and are only read; a case that damages a run works on a copy.
This module holds the cases of train, prepare and sample; test_bad_inputs_tools.py those of the other
commands.
"""

from __future__ import annotations


import pytest
from bad_input_support import Case, Env, _dangling_link, _symlink_loop, _truncate_largest_checkpoint_file, check_case
from conftest import write_corpus

CASES = [
    # --- train (python train.py) -----------------------------------------------------------------------
    Case("train-binary-corpus", "train",
         lambda e: e.train(e.file("bin.txt", bytes(range(256)) * 8)), "looks binary (NUL byte at offset 0)"),
    Case("train-empty-folder", "train",
         lambda e: e.train(e.file("empty/.keep", "").parent), "has no .txt files"),
    Case("train-symlink-loop-folder", "train",
         lambda e: e.train(_symlink_loop(e)), "has no .txt files"),
    # One character repeated: a vocabulary of one token, whose only prediction is always right (the loss
    # is exactly 0 from the first step and the gradients are 0). Nothing can be learned, so it is refused
    # before anything is written, rather than "training" a model that can only repeat that character.
    Case("train-one-repeated-character", "train",
         lambda e: e.train(e.file("aaa.txt", "a" * 5000)), "only one distinct character ('a')"),
    Case("train-config-syntax-error", "train",
         lambda e: ["--config", str(e.file("bad.py", "config = Config(\n"))], "has a syntax error on line"),
    Case("train-config-file-type-error", "train",
         lambda e: ["--config", str(e.file("typed.py", "from jaxgpt.config import Config, ModelConfig\n"
                                                       "config = Config(model=ModelConfig(n_layer='2'))\n")),
                    f"--train.out_dir={e.tmp / 'run'}", f"--data.cache_dir={e.tmp / 'data'}"],
         "model.n_layer must be an int, got '2'"),
    Case("train-override-type-error", "train",
         lambda e: e.train(e.base.corpus, "--model.n_layer=two"), "model.n_layer='two' is not a valid int"),
    Case("train-unknown-key", "train",
         lambda e: e.train(e.base.corpus, "--model.n_layers=2"), "unknown config key 'model.n_layers'"),
    Case("train-zero-n-layer", "train",
         lambda e: e.train(e.base.corpus, "--model.n_layer=0"), "model.n_layer must be positive, got 0"),
    Case("train-negative-block-size", "train",
         lambda e: e.train(e.base.corpus, "--model.block_size=-8"), "model.block_size must be positive, got -8"),
    Case("train-zero-batch-size", "train",
         lambda e: e.train(e.base.corpus, "--train.batch_size=0"), "train.batch_size must be positive, got 0"),
    Case("train-negative-n-head", "train",
         lambda e: e.train(e.base.corpus, "--model.n_head=-2"), "model.n_head must be positive, got -2"),
    Case("train-malformed-profile-steps", "train",
         lambda e: e.train(e.base.corpus, "--train.profile_steps=5"), "train.profile_steps '5' must be A:B"),
    Case("train-profile-steps-backwards", "train",
         lambda e: e.train(e.base.corpus, "--train.profile_steps=9:3"), "(1 <= A <= B)"),
    Case("train-hellaswag-file-missing", "train",
         lambda e: e.train(e.base.corpus, f"--train.hellaswag={e.tmp / 'hs.jsonl'}"), "hs.jsonl does not exist"),
    Case("train-zero-eval-interval", "train",
         lambda e: e.train(e.base.corpus, "--train.eval_interval=0"), "train.eval_interval must be positive"),
    Case("train-negative-warmup", "train",
         lambda e: e.train(e.base.corpus, "--train.warmup_steps=-1"), "train.warmup_steps must not be negative"),
    Case("train-n-embd-not-divisible", "train",
         lambda e: e.train(e.base.corpus, "--model.n_embd=30", "--model.n_head=4"),
         "model.n_embd (30) must be divisible by model.n_head (4)"),
    Case("train-positional-argument", "train",
         lambda e: e.train(e.base.corpus, "model.n_layer=2"), "cannot read argument 'model.n_layer=2'"),
    Case("train-bad-option-value", "train",
         lambda e: ["--config"], "argument --config: expected one argument"),
    Case("train-out-dir-is-a-file", "train",
         lambda e: [*e.train(e.base.corpus), f"--train.out_dir={e.file('taken', 'mine')}"],
         "exists and is not a directory"),
    # init_from's position table (16) is shorter than the context asked for (32). The data cache is
    # prepared before the pretrained model is examined: a new, valid cache folder is acceptable.
    Case("train-init-from-short-context", "train",
         lambda e: e.train(e.base.corpus, f"--train.init_from={e.base.run}", "--model.block_size=32"),
         "model.block_size=32 exceeds the 16 positions", new_ok=("data",)),
    Case("train-resume-other-architecture", "train",
         lambda e: (e.run_copy(), e.resume("--model.n_layer=1"))[1], "other settings (model.n_layer: 2 -> 1"),
    Case("train-resume-truncated-checkpoint", "train",
         lambda e: (_truncate_largest_checkpoint_file(e.run_copy()), e.resume("--train.max_steps=20"))[1],
         "is damaged (a file is truncated or corrupt); delete"),
    # The same run directory, new data: the tokenizer (and with it the vocabulary) differs. The gpt2
    # cache of the corpus is prepared first (train/pretrain.py compares after preparing): allowed, as above.
    Case("train-resume-other-tokenizer", "train",
         lambda e: (e.run_copy(), e.resume("--data.tokenizer=gpt2"))[1],
         "data.tokenizer: 'char' -> 'gpt2'", new_ok=("data",)),
    # --- meshes and processes: refused before any data is prepared ----------------------------------------
    Case("train-mesh-larger-than-devices", "train",
         lambda e: e.train(e.base.corpus, "--mesh.data=3"), "mesh data=3 x fsdp=1 x tensor=1 has 3 devices but"),
    Case("train-mesh-two-rest-axes", "train",
         lambda e: e.train(e.base.corpus, "--mesh.fsdp=-1"), "only one of mesh.data, mesh.fsdp and mesh.tensor"),
    Case("train-mesh-bad-rule", "train",
         lambda e: e.train(e.base.corpus, "--mesh.rules=embed=gpu"), "mesh.rules entry 'embed=gpu' must be"),
    Case("train-processes-without-coordinator", "train",
         lambda e: e.train(e.base.corpus, "--dist.num_processes=2"), "needs dist.coordinator (host:port"),
    Case("train-block-size-one", "train",
         lambda e: e.train(e.base.corpus, "--model.block_size=1"), "model.block_size must be at least 2"),
    Case("train-negative-seed", "train",
         lambda e: e.train(e.base.corpus, "--train.seed=-1"), "train.seed must be a whole number from 0"),
    Case("train-out-dir-broken-symlink", "train",
         lambda e: (_dangling_link(e, "run"), e.train(e.base.corpus))[1], "is a broken symbolic link"),
    Case("train-unknown-remat", "train",
         lambda e: e.train(e.base.corpus, "--model.remat=yes"), "model.remat must be one of none, full, dots"),
    Case("train-unknown-tokenizer", "train",
         lambda e: e.train(e.base.corpus, "--data.tokenizer=bpe"), "unknown tokenizer 'bpe'"),
    Case("train-nan-weight-decay", "train",
         lambda e: e.train(e.base.corpus, "--train.weight_decay=nan"), "train.weight_decay must be a finite number"),
    Case("train-init-from-missing", "train",
         lambda e: e.train(e.base.corpus, f"--train.init_from={e.tmp / 'gpt2'}"), "gpt2 does not exist",
         new_ok=("data",)),
    # A character corpus without a newline cannot encode the recipe's sample prompt ("\n"): found before
    # anything is written.
    Case("train-sample-prompt-outside-vocabulary", "train",
         lambda e: e.train(e.file("flat.txt", "to be or not to be, that is the question. " * 60),
                           "--train.max_steps=2", "--train.eval_interval=2", "--train.log_interval=1"),
         "train.sample_prompt", new_ok=("data",)),
    Case("train-resume-damaged-tokenizer-json", "train",
         lambda e: (e.run_copy(), e.file("run/tokenizer.json", '{"kind": "ch'), e.resume())[2],
         "tokenizer.json is damaged"),
    Case("train-cache-dir-is-a-file", "train",
         lambda e: [*e.train(e.base.corpus), f"--data.cache_dir={e.file('cache', 'x')}"],
         "cannot create the data cache"),

    # --- prepare ---------------------------------------------------------------------------------------
    Case("prepare-not-utf8", "jaxgpt",
         lambda e: ["prepare", "--source", str(e.file("latin1.txt", "caf\xe9\n".encode("latin-1") * 20)),
                    "--cache-dir", str(e.tmp / "data")], "is not UTF-8 (bad byte at offset 3)"),
    Case("prepare-whitespace-only", "jaxgpt",
         lambda e: ["prepare", "--source", str(e.file("blank.txt", " \n\t\n")), "--cache-dir", str(e.tmp / "data")],
         "is empty (only whitespace)"),
    Case("prepare-missing-source", "jaxgpt",
         lambda e: ["prepare", "--source", str(e.tmp / "nope.txt"), "--cache-dir", str(e.tmp / "data")],
         "does not exist"),
    Case("prepare-val-fraction-one", "jaxgpt",
         lambda e: ["prepare", "--source", str(e.base.corpus), "--val-fraction", "1", "--cache-dir",
                    str(e.tmp / "data")], "val_fraction must be strictly between 0 and 1"),
    Case("prepare-unknown-tokenizer", "jaxgpt",
         lambda e: ["prepare", "--source", str(e.base.corpus), "--tokenizer", "bpe", "--cache-dir",
                    str(e.tmp / "data")], "unknown tokenizer 'bpe'"),
    Case("prepare-too-short", "jaxgpt",
         lambda e: ["prepare", "--source", str(e.file("one.txt", "x")), "--cache-dir", str(e.tmp / "data")],
         "too few to split"),

    # --- sample ----------------------------------------------------------------------------------------
    Case("sample-truncated-checkpoint", "jaxgpt",
         lambda e: (_truncate_largest_checkpoint_file(e.run_copy()), ["sample", str(e.tmp / "run")])[1],
         "is damaged"),
    Case("sample-prompt-of-unknown-characters", "jaxgpt",
         lambda e: ["sample", str(e.base.run), "--prompt", "@#%", "--num-tokens", "3"],
         "the prompt has characters this model does not know: '#', '%', '@'"),
    Case("sample-zero-tokens", "jaxgpt",
         lambda e: ["sample", str(e.base.run), "--num-tokens", "0"],
         "--num-tokens and --num-samples must be at least 1"),
    Case("sample-not-a-number", "jaxgpt",
         lambda e: ["sample", str(e.base.run), "--num-tokens", "many"], "argument --num-tokens: invalid int value"),
    Case("sample-missing-step", "jaxgpt",
         lambda e: ["sample", str(e.base.run), "--step", "999"], "has no checkpoint at step 999"),
    Case("sample-temperature-nan", "jaxgpt",
         lambda e: ["sample", str(e.base.run), "--temperature", "nan"], "temperature must be >= 0"),
    Case("sample-damaged-config-json", "jaxgpt",
         lambda e: (e.run_copy(), e.file("run/config.json", "{"), ["sample", str(e.tmp / "run")])[2],
         "config.json is damaged or unreadable"),
    Case("sample-damaged-tokenizer-json", "jaxgpt",
         lambda e: (e.run_copy(), e.file("run/tokenizer.json", '{"kind": "ch'), ["sample", str(e.tmp / "run")])[2],
         "tokenizer.json is damaged"),
    Case("sample-config-json-not-an-object", "jaxgpt",
         lambda e: (e.run_copy(), e.file("run/config.json", "[]"), ["sample", str(e.tmp / "run")])[2],
         "config.json is damaged (not a JSON object)"),
    Case("sample-config-json-wrong-type", "jaxgpt",
         lambda e: (e.run_copy(), e.file("run/config.json", '{"model": {"n_layer": "x"}}'),
                    ["sample", str(e.tmp / "run")])[2], "holds settings this jaxgpt cannot use"),
    Case("sample-prompt-broken-escape", "jaxgpt",
         lambda e: ["sample", str(e.base.run), "--prompt", "ab\\"], "--prompt has a broken escape sequence"),
    Case("sample-seed-too-big", "jaxgpt",
         lambda e: ["sample", str(e.base.run), "--seed", str(2**70)], "--seed must be a whole number from 0"),
    Case("sample-empty-prompt", "jaxgpt",
         lambda e: ["sample", str(e.base.run), "--prompt", ""], "the prompt encodes to no tokens"),

]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, base, tmp_path, capfd):
    check_case(case, base, tmp_path, capfd)


def test_the_table_covers_every_command():
    from test_bad_inputs_tools import CASES as TOOL_CASES

    from jaxgpt.cli.main import RECIPES, build_parser

    commands = {c.id.split("-")[0] if c.id.split("-")[0] != "finetune" else "-".join(c.id.split("-")[:2])
                for c in CASES + TOOL_CASES}
    sub = next(a for a in build_parser()._actions if a.dest == "command")  # every command of the CLI
    no_inputs = {"info"}  # takes no arguments or files, so nothing a user can get wrong
    expected = ({name for name in sub.choices if name != "finetune"} - no_inputs) | {f"finetune-{r}" for r in RECIPES}
    assert commands == expected
    assert len(CASES + TOOL_CASES) >= 30


def test_a_symlink_loop_beside_text_is_read_once(tmp_path):
    """The loop itself is not an error: the folder's text is read once and the loop is never entered."""
    from jaxgpt.data.text import load_documents

    folder = _symlink_loop(Env(tmp_path, None))
    write_corpus(folder / "sub" / "a.txt", n_lines=5)
    assert len(load_documents(str(folder))) == 1
