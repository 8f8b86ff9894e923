"""Finetuning recipes on tiny models: data reading, collation masks, last-token selection, accuracy,
the Alpaca template, trainable parts and LoRA's optimizer state, and the commands end to end."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import save_bpe_model

from jaxgpt.store import checkpoint
from jaxgpt.model import objectives
from jaxgpt.cli.main import main
from jaxgpt.config import Config, ModelConfig, TrainConfig
from jaxgpt.train.engine import Engine
from jaxgpt.errors import UserError
from jaxgpt.finetune import classify, common, instruct
from jaxgpt.store.loader import load_pretrained
from jaxgpt.model.gpt import GPTClassifier, init_params

EOT = 50256


def test_collate_matches_the_book():
    inputs, targets = instruct.collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], EOT)
    np.testing.assert_array_equal(targets, [[1, 2, 3, 4, EOT], [6, EOT, -100, -100, -100], [8, 9, EOT, -100, -100]])
    np.testing.assert_array_equal(inputs, [[0, 1, 2, 3, 4], [5, 6, EOT, EOT, EOT], [7, 8, 9, EOT, EOT]])


def test_collate_prompt_mask_padding_multiple_and_max_length():
    inputs, targets = instruct.collate([[10, 11, 12, 13], [20, 21]], EOT, prompt_lengths=[2, 1], pad_multiple=8)
    assert inputs.shape == targets.shape == (2, 8)
    # Row 0: the prompt is 2 tokens, so the target predicting token 1 (inside the prompt) is ignored.
    np.testing.assert_array_equal(targets[0], [-100, 12, 13, EOT, -100, -100, -100, -100])
    np.testing.assert_array_equal(targets[1], [21, EOT, -100, -100, -100, -100, -100, -100])
    inputs, targets = instruct.collate([[1, 2, 3, 4, 5, 6]], EOT, allowed_max_length=4)
    np.testing.assert_array_equal(inputs, [[1, 2, 3, 4]])
    np.testing.assert_array_equal(targets, [[2, 3, 4, 5]])


def test_alpaca_template():
    with_input = instruct.format_prompt({"instruction": "Add the numbers.", "input": "2 and 3"})
    assert with_input == (f"{instruct.PREAMBLE}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3"
                          "\n\n### Response:\n")
    assert "### Input" not in instruct.format_prompt({"instruction": "Say hi.", "input": ""})


def test_classifier_reads_the_last_real_token_whatever_the_padding():
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    params = {"gpt": init_params(cfg, jax.random.key(0)),
              "head": {"kernel": jax.random.normal(jax.random.key(1), (32, 3)), "bias": jnp.zeros(3)}}
    model = GPTClassifier(cfg, 3)
    assert jax.tree.structure(params) == jax.tree.structure(nn.unbox(jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.ones(1, jnp.int32))["params"])))
    tokens = np.array([[5, 6, 7, 0, 0, 0], [5, 6, 7, 9, 9, 9]], np.int32)
    lengths = np.array([3, 3], np.int32)
    logits = model.apply({"params": params}, tokens, lengths)
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-6)  # padding differs, the answer does not
    short = model.apply({"params": params}, tokens[:, :3], lengths)
    np.testing.assert_allclose(logits, short, atol=1e-5)
    other = model.apply({"params": params}, tokens, np.array([4, 4], np.int32))
    assert not np.allclose(other[0], other[1])  # now the 4th token (0 vs 9) is read


def test_read_labeled_sms_spam_layout_and_csv(tmp_path):
    sms = tmp_path / "SMSSpamCollection"
    sms.write_text('ham\tGo until jurong point, "crazy".\nspam\tFree entry in 2 a wkly comp\nham\tOk lar...\n')
    assert classify.read_labeled(sms) == [("ham", 'Go until jurong point, "crazy".'),
                                          ("spam", "Free entry in 2 a wkly comp"), ("ham", "Ok lar...")]
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text('id,review,sentiment\n1,"Great, really",pos\n2,Awful,neg\n')
    assert classify.read_labeled(csv_file, "sentiment", "review") == [("pos", "Great, really"), ("neg", "Awful")]


@pytest.mark.parametrize("content,args,pattern", [
    ("id,a,b\n1,x,y\n", (), "has no columns 'label' and 'text'"),
    ("label,text\nspam,\n", (), "line 2 has an empty text"),
    ("", (), "is empty"),
])
def test_read_labeled_bad_files(tmp_path, content, args, pattern):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=pattern):
        classify.read_labeled(path, *args)


def test_split_balances_and_refuses_one_class():
    examples = [("a", f"x{i}") for i in range(30)] + [("b", f"y{i}") for i in range(10)]
    names, splits = classify.split_examples(examples, classify.ClassifyConfig())
    labels = [y for s in splits.values() for y, _ in s]
    assert names == ["a", "b"] and labels.count(0) == labels.count(1) == 10
    assert [len(s) for s in splits.values()] == [14, 2, 4]  # 70/10/20
    with pytest.raises(UserError, match="only one class"):
        classify.split_examples([("a", "x")] * 5, classify.ClassifyConfig())


def test_read_instructions_bad_inputs(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "input": "d", "output": "e"}\n')
    assert instruct.read_instructions(good)[0] == {"instruction": "a", "input": "", "output": "b"}
    for content, pattern in (('{"instruction": "a"}', "lacks a text field 'output'"), ('{"a": 1', "not JSON"),
                             ('[1, 2]', "is not an object"), ('[]', "non-empty list")):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(UserError, match=pattern):
            instruct.read_instructions(bad)


@pytest.fixture(scope="module")
def bpe_base(tmp_path_factory):
    """A tiny GPT with GPT-2's vocabulary saved as a jaxgpt model directory."""
    return save_bpe_model(tmp_path_factory.mktemp("base") / "model", block_size=128)


def _opt_leaves(state):
    return [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) > 0]


@pytest.mark.parametrize("trainable", ["head", "last_blocks", "lora"])
def test_only_the_chosen_parts_train_and_reach_the_optimizer(bpe_base, trainable):
    cfg = classify.ClassifyConfig.of(init_from=str(bpe_base), trainable=trainable, lora_rank=2)
    model_cfg, gpt = load_pretrained(bpe_base)
    model = GPTClassifier(model_cfg, 2)
    run = Config(model=model_cfg, train=TrainConfig(batch_size=8, warmup_steps=0, lr_schedule="constant"))
    engine = Engine(run, model, objectives.classifier(model, common.parts(cfg).lora), common.parts(cfg))
    state, frozen = engine.start({"gpt": gpt})
    sizes = sum(x.size for x in jax.tree.leaves(state.params))
    # Adam's two moments per trainable number, and nothing of the frozen weights.
    assert sum(x.size for x in _opt_leaves(state)) == 2 * sizes
    if trainable == "lora":
        assert set(state.params) == {"head", "lora"} and sizes < 0.01 * sum(x.size for x in jax.tree.leaves(gpt))
        jax.tree.map(np.testing.assert_array_equal, frozen["gpt"], gpt)  # the base weights, unchanged
    elif trainable == "head":
        assert set(state.params) == {"head"}
    else:
        assert set(state.params["gpt"]) == {"h_1", "ln_f"}  # the last block (of 2) and the final LayerNorm
    batch = (np.ones((1, 8, 5), np.int32), np.full((1, 8), 5, np.int32), np.arange(8)[None] % 2,
             np.ones((1, 8), np.float32))
    before, trained = jax.tree.map(np.asarray, frozen), jax.tree.map(np.asarray, state.params)
    new, metrics = engine.train_step(state, engine.put(batch), frozen)  # the state is donated
    assert jax.tree.all(jax.tree.map(np.array_equal, before, jax.tree.map(np.asarray, frozen)))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), trained, jax.tree.map(np.asarray, new.params))
    assert any(jax.tree.leaves(changed)) and np.isfinite(float(metrics["loss"]))


def test_finetune_classify_end_to_end(bpe_base, tmp_path, capsys):
    data = tmp_path / "spam.tsv"
    rows = [("spam", f"win a free prize now {i}") for i in range(40)]
    rows += [("ham", f"see you at lunch {i}") for i in range(40)]
    data.write_text("".join(f"{l}\t{t}\n" for l, t in rows))
    out = tmp_path / "clf"
    args = ["finetune", "classify", "--init-from", str(bpe_base), "--data", str(data), "--out-dir", str(out),
            "--epochs", "4", "--learning-rate", "3e-3", "--trainable", "all"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] >= 0.9 > results["majority_baseline"] - 0.5
    assert np.sum(results["confusion_matrix"]) == results["examples"]["test"] == 16
    assert {"loss.png", "accuracy.png", "metrics.jsonl", "task.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "task.json").read_text())["labels"] == ["ham", "spam"]
    assert main(["classify", "--ckpt", str(out), "win a free prize now", "see you at lunch"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [l.split("\t")[0] for l in lines] == ["spam", "ham"]
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # never overwritten silently
    # The finetuned backbone still samples as a language model.
    assert main(["sample", str(out), "--num-tokens", "3", "--prompt", "hi"]) == 0


def test_finetune_instruct_end_to_end(bpe_base, tmp_path, capsys):
    data = tmp_path / "data.json"
    entries = [{"instruction": "Say the word.", "input": w, "output": w} for w in ["cat", "dog", "sun", "sea"] * 10]
    data.write_text(json.dumps(entries))
    out = tmp_path / "inst"
    args = ["finetune", "instruct", "--init-from", str(bpe_base), "--data", str(data), "--out-dir", str(out),
            "--epochs", "2", "--max-new-tokens", "4", "--trainable", "lora", "--learning-rate", "1e-2",
            "--mask-prompt"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["examples"] == {"train": 34, "val": 2, "test": 4}
    responses = json.loads((out / "test_responses.json").read_text())
    assert len(responses) == 4 and all("model_response" in r for r in responses)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "inst"]  # nothing beside the input
    assert main(args) == 2 and "holds a finished finetune" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["chat", str(out), "Say the word.", "--input", "cat", "--max-new-tokens", "3"]) == 0


def test_embedded_classification_task_with_a_character_model(tmp_path):
    """The default task (comedy vs tragedy) from a character-level model, as after `python train.py`."""
    from jaxgpt.data.shakespeare import shakespeare_text
    from jaxgpt.tokenizer.kinds import CharTokenizer

    tok = CharTokenizer.from_text(shakespeare_text())
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32)
    checkpoint.save_model(tmp_path / "char", Config(model=cfg), init_params(cfg, jax.random.key(0)), tok.meta(), {})
    examples = classify.shakespeare_genres(per_class=30, seed=1)
    assert sorted({label for label, _ in examples}) == ["comedy", "tragedy"] and len(examples) == 60
    assert all(80 <= len(text) <= 240 and ":\n" not in text for _, text in examples)
    results = classify.finetune(classify.ClassifyConfig.of(init_from=str(tmp_path / "char"), per_class=30, epochs=1,
                                                        out_dir=str(tmp_path / "out"), progress=False))
    assert results["max_length"] == 64 and results["truncated"]["train"] > 0  # passages are cut to the context
    assert results["examples"] == {"train": 42, "val": 6, "test": 12}
    with pytest.raises(UserError, match="no <|endoftext|>"):
        instruct.finetune(instruct.InstructConfig.of(init_from=str(tmp_path / "char"), n_tasks=40,
                                                  out_dir=str(tmp_path / "inst")))
    assert not (tmp_path / "inst").exists()


def test_a_class_only_in_the_test_split_is_refused():
    examples = [("a", f"x{i}") for i in range(50)] + [("b", "lonely")]
    cfg = classify.ClassifyConfig.of(balance=False)
    raised = 0
    for seed in range(10):
        try:
            classify.split_examples(examples, cfg.replace(seed=seed))
        except UserError as e:
            assert "class 'b' is in the" in str(e) and "but not in training" in str(e)
            raised += 1
    assert 0 < raised < 10  # refused exactly when the lone example misses the training split


@pytest.mark.parametrize("args,pattern", [
    (["classify", "--data", "missing.csv"], "does not exist"),
    (["classify", "--trainable", "everything"], "--trainable must be one of"),
    (["classify", "--epochs", "0"], "--epochs must be positive"),
    (["classify", "--max-length", "500"], "exceeds the model's context of 128"),
    (["classify", "--max-length", "4", "--no-truncate"], "longer than 4 tokens"),
    (["instruct", "--data", "{data}"], "lacks a text field 'output'"),
    (["instruct", "--trainable", "head"], "--trainable must be one of all, last_blocks, lora"),
])
def test_finetune_bad_input_is_one_line(bpe_base, tmp_path, capsys, args, pattern):
    (tmp_path / "bad.json").write_text('[{"instruction": "x"}]')
    spam = tmp_path / "spam.tsv"
    spam.write_text("".join(f"{'spam' if i % 2 else 'ham'}\tmessage number {i} is here\n" for i in range(40)))
    args = [a.replace("{data}", str(tmp_path / "bad.json")) for a in args]
    if args[0] == "classify" and "--data" not in args:
        args += ["--data", str(spam)]
    code = main(["finetune", *args, "--init-from", str(bpe_base), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and pattern in err, err
    assert not (tmp_path / "out").exists()
