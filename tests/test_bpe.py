"""Your own byte-level BPE: trained on a corpus, exact round trips, used for data and training, carried by
the run (and by its Hugging Face export), and more compact than GPT-2's on the text it was trained on."""

import json
import random
import shutil

import numpy as np
import pytest

from jaxgpt.tokenizer.bpe import BPETokenizer, bytes_per_token, load_bpe, train_bpe
from jaxgpt.cli.main import main
from jaxgpt.tokenizer.kinds import GPT2Tokenizer, get_tokenizer, tokenizer_from_meta

HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"


def _chinese(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(HANZI) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    return ["".join(rng.choice(words) + rng.choice(["", "", "，", "。"]) for _ in range(rng.randint(20, 80)))
            for _ in range(n)]


def _english(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = "the of and to in is was that for it with as his on be at by had are but from".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe") / "tok"
    train_bpe(_chinese(300, 0) + _english(300, 0), vocab_size=600, out=out)
    return out


def test_training_gives_a_byte_level_bpe_that_round_trips_anything(bpe_dir):
    tok = load_bpe(bpe_dir)
    assert tok.vocab_size == 600 and tok.decode([tok.eot_id]) == "<|endoftext|>"
    for text in ["hello world", "中文的一是", "emoji 🦊 and tabs\t\n", "", "  spaces  ", "<|endoftext|>x"]:
        assert tok.decode(tok.encode(text)) == text, text
    assert tok.encode("a<|endoftext|>b")[1] == tok.eot_id
    again = tokenizer_from_meta(json.loads(json.dumps(tok.meta())))  # the meta alone rebuilds it
    assert again.encode("中文 and text") == tok.encode("中文 and text")


def test_a_trained_bpe_is_more_compact_on_its_own_kind_of_text(bpe_dir):
    tok, gpt2 = load_bpe(bpe_dir), GPT2Tokenizer()
    held_out = _chinese(50, 1)
    ours, theirs = bytes_per_token(tok, held_out), bytes_per_token(gpt2, held_out)
    assert ours > 1.5 * theirs, (ours, theirs)  # GPT-2 spends two to three tokens on most Chinese characters


def test_training_with_the_bpe_carries_it_in_the_run_and_its_export(bpe_dir, tmp_path, tiny_config, capsys):
    import dataclasses

    from transformers import PreTrainedTokenizerFast

    from jaxgpt.store.loader import load
    from jaxgpt.train.pretrain import train

    (tmp_path / "corpus.txt").write_text("\n".join(_english(60, 2) + _chinese(60, 2)))
    local = tmp_path / "tok"
    shutil.copytree(bpe_dir, local)
    cfg = dataclasses.replace(
        tiny_config, data=dataclasses.replace(tiny_config.data, source=str(tmp_path / "corpus.txt"), tokenizer=str(local)),
        train=dataclasses.replace(tiny_config.train, max_steps=4, eval_interval=4))
    train(cfg)
    run = tmp_path / "run"
    assert json.loads((run / "tokenizer.json").read_text())["kind"] == "bpe"
    shutil.rmtree(local)  # the run alone suffices from now on
    model = load(run)
    assert model.config.vocab_size == 600 and model.tokenizer().decode(model.tokenizer().encode("中文")) == "中文"
    assert main(["sample", str(run), "--prompt", "中文", "--num-tokens", "3"]) == 0
    assert main(["convert", str(run), str(tmp_path / "hf")]) == 0
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    text = "the 中文 text."
    assert hf.encode(text) == model.tokenizer().encode(text)


def test_prepare_with_the_bpe_folder(bpe_dir, tmp_path):
    docs = _english(30, 3) + _chinese(30, 3)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    assert main(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--tokenizer", str(bpe_dir),
                 "--val-fraction", "0", "--workers", "1"]) == 0
    tok = get_tokenizer(str(bpe_dir))
    shard = np.fromfile(tmp_path / "ds" / "train-000000.bin", np.uint16)
    np.testing.assert_array_equal(shard, [t for d in docs for t in tok.encode_document(d)])
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["tokenizer"] == tok.meta()


def test_tokenizer_train_command(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(" ".join(_english(20, 4)))
    assert main(["tokenizer", "train", str(tmp_path / "a.txt"), "--vocab-size", "300", "--out", str(tmp_path / "t")]) == 0
    assert isinstance(load_bpe(tmp_path / "t"), BPETokenizer) and "--data.tokenizer=" in capsys.readouterr().out
    assert main(["tokenizer", "train", str(tmp_path / "a.txt"), "--vocab-size", "300", "--out", str(tmp_path / "t")]) == 2
