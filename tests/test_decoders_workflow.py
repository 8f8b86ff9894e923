"""A Qwen3 chat model (random weights from transformers, a tokenizer.json with a chat template) through
every command: convert both ways, sample, chat as transformers would, and each finetune (full and LoRA)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tokenizer_hf import QWEN_SPLIT, QWEN_TEMPLATE, _train
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from jaxgpt.cli.main import main


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A small Qwen3 with GQA and QK-norm, saved with its tokenizer as a Hugging Face directory."""
    tok = _train(QWEN_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], nfc=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    path = tmp_path_factory.mktemp("qwen3")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            chat_template=QWEN_TEMPLATE).save_pretrained(path)
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                      tie_word_embeddings=True, attn_implementation="eager")
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    return path, model


def test_chat_renders_the_template_and_answers_as_transformers(qwen, capsys):
    path, model = qwen
    hf_tok = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "你好, who are you?"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False, eos_token_id=hf_tok.eos_token_id,
                             pad_token_id=hf_tok.eos_token_id)
    want = hf_tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert main(["chat", str(path), messages[0]["content"], "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == want.strip()


def test_convert_both_ways_keeps_weights_and_tokenizer(qwen, tmp_path):
    path, model = qwen
    assert main(["convert", str(path), str(tmp_path / "jx")]) == 0
    assert main(["convert", str(tmp_path / "jx"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    text = "Hello 世界 <|im_start|>user"
    exported, original = AutoTokenizer.from_pretrained(tmp_path / "hf"), AutoTokenizer.from_pretrained(path)
    assert exported(text)["input_ids"] == original(text)["input_ids"]
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    tokens = torch.arange(20)[None] % model.config.vocab_size
    with torch.no_grad():
        np.testing.assert_allclose(again(tokens).logits.numpy(), model(tokens).logits.numpy(), atol=1e-5)
    assert main(["sample", str(tmp_path / "jx"), "--prompt", "Hello", "--num-tokens", "4", "--temperature", "0"]) == 0


@pytest.mark.parametrize("recipe,trainable", [("instruct", "lora"), ("classify", "last_blocks"), ("dpo", "lora")])
def test_each_finetune_runs_on_a_qwen3(qwen, tmp_path, recipe, trainable):
    path, _ = qwen
    if recipe == "instruct":
        data = [{"instruction": "Say the word.", "input": w, "output": w} for w in ["cat", "dog", "sun", "sea"] * 6]
        extra = ["--max-new-tokens", "2"]
    elif recipe == "dpo":
        data = [{"prompt": f"Question {i}?", "chosen": " yes", "rejected": " no"} for i in range(24)]
        extra = []
    else:
        data = "label\ttext\n" + "".join(f"{'a' if i % 2 else 'b'}\ttext number {i}\n" for i in range(40))
        extra = []
    file = tmp_path / ("data.tsv" if recipe == "classify" else "data.json")
    file.write_text(data if isinstance(data, str) else json.dumps(data))
    out = tmp_path / "out"
    assert main(["finetune", recipe, "--init-from", str(path), "--data", str(file), "--out-dir", str(out),
                 "--epochs", "1", "--batch-size", "4", "--trainable", trainable, "--no-progress", *extra]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    if recipe == "instruct":  # the finetuned model chats in Alpaca's format, with the Qwen tokenizer
        assert main(["chat", str(out), "Say the word.", "--input", "cat", "--max-new-tokens", "2"]) == 0


def test_pretraining_with_a_hugging_face_tokenizer_folder(qwen, tmp_path, tiny_config):
    """data.tokenizer=DIR with a tokenizer.json and tokenizer_config.json: the data is tokenized with it, the
    run carries it, and a second run finds the same cached tokens."""
    import dataclasses

    from jaxgpt.store.loader import load
    from jaxgpt.tokenizer.hf import load_hf_tokenizer
    from jaxgpt.train.pretrain import train

    path, _ = qwen
    cfg = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, tokenizer=str(path)),
                              model=dataclasses.replace(tiny_config.model, position="rope", norm="rmsnorm"))
    train(cfg)
    model = load(cfg.train.out_dir)
    tokenizer = load_hf_tokenizer(path)
    assert model.tokenizer_meta == tokenizer.meta() and model.config.vocab_size == tokenizer.vocab_size
    assert [p.name.split("-")[0] for p in Path(cfg.data.cache_dir).iterdir()] == ["hf"]
