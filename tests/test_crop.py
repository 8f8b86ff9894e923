"""Finetune data that cannot teach: what cropping keeps, the counts a finetune reports, and the refusal."""

import json

import pytest
from conftest import save_bpe_model

from jaxgpt.cli.main import main
from jaxgpt.finetune import crop, dpo, instruct


def test_crop_keeps_the_response_and_counts_the_trained_targets():
    p, r = list(range(10)), [100, 101, 102]
    assert crop.crop(p, r, 8, "right") == p
    assert crop.crop(p, r, 8, "prompt-left") == p[5:]  # 5 + 3 tokens fit the 8 the model reads
    assert crop.crop(p, r * 4, 8, "prompt-left") == p[-1:]  # a response longer than the context: one prompt token
    assert crop.crop(p, r, 20, "prompt-left") == p
    # 13 tokens, 8 read: a masked prompt of 10 leaves no target; unmasked, all 8 are trained
    assert crop.trained(10, 13, 8, mask_prompt=True) == 0 and crop.trained(10, 13, 8, mask_prompt=False) == 8
    assert crop.trained(5, 8, 8, mask_prompt=True) == 4  # the response's 3 tokens and the end-of-text
    assert crop.trained(10, 13, 20, mask_prompt=True) == 4


def test_dpo_pairs_the_same_after_cropping_are_dropped():
    prompts, chosen, rejected = [[1] * 6, [2] * 3], [[7, 8, 9, 4], [7, 8]], [[7, 8, 9, 5], [6, 5]]
    kept, counts, _ = dpo.fit_pairs([0, 1], prompts, chosen, rejected, max_length=8, how="right")
    # pair 0 is read as 8 tokens and learned as the 8 targets after them: up to (7, 8, 9) both times
    assert list(kept) == [1] and counts.dropped == 1 and counts.cropped == 0
    assert counts.reasons == {"with chosen and rejected the same within the context": 1}
    assert counts.trained_tokens == 2 * 3  # pair 1: two response tokens and the end-of-text, twice


@pytest.fixture(scope="module")
def short_base(tmp_path_factory):
    """A GPT with GPT-2's vocabulary and a 32-token context."""
    return save_bpe_model(tmp_path_factory.mktemp("short") / "model", block_size=32)


def _pairs(path, n_long: int, n_short: int = 0):
    long = " ".join(["word"] * 40)  # 40 tokens: the prompt alone fills the context
    records = [{"prompt": f"{long} question {i}?\n", "chosen": " yes", "rejected": " no"} for i in range(n_long)]
    records += [{"prompt": f"question {i}?\n", "chosen": " yes", "rejected": " no"} for i in range(n_short)]
    path.write_text(json.dumps(records))
    return str(path)


def test_dpo_on_responses_past_the_context_is_refused_in_one_line(short_base, tmp_path, capsys):
    code = main(["finetune", "dpo", "--init-from", str(short_base), "--data", _pairs(tmp_path / "p.json", 24),
                 "--out-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: no pairs of the train split keep a trained token within the "
                                        "32-token context") and "\n" not in err, err
    assert "--crop=prompt-left" in err and "the longest prompt has" in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_instruct_with_masked_prompts_past_the_context_is_refused(short_base, tmp_path, capsys):
    long = " ".join(["word"] * 40)
    data = tmp_path / "i.json"
    data.write_text(json.dumps([{"instruction": f"{long} {i}", "output": "yes"} for i in range(20)]))
    code = main(["finetune", "instruct", "--init-from", str(short_base), "--data", str(data), "--mask-prompt",
                 "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no examples of the train split keep a trained token" in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_partly_cropped_set_trains_on_the_rest_and_reports_the_counts(short_base, tmp_path):
    cfg = dpo.DPOConfig.of(init_from=str(short_base), data=_pairs(tmp_path / "p.json", 12, 12),
                           out_dir=str(tmp_path / "out"), epochs=1, batch_size=2, val_fraction=0.25,
                           max_new_tokens=2, score_base=False, progress=False)
    results = dpo.finetune(cfg)
    data = results["data"]
    assert data["train"]["examples"] + data["train"]["dropped"] == 16 and data["train"]["dropped"] > 0
    assert data["train"]["examples"] > 0 and data["val"]["examples"] > 0
    assert data["train"]["trained_tokens"] > 0 and data["train"]["dropped_because"]
    task = json.loads((tmp_path / "out" / "task.json").read_text())
    assert task["data"] == data  # the counts travel with the run
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["chosen_logp"] != 0 for r in records if "chosen_logp" in r)  # every kept pair has a response


def test_prompt_left_crop_keeps_the_responses(short_base, tmp_path):
    cfg = dpo.DPOConfig.of(init_from=str(short_base), data=_pairs(tmp_path / "p.json", 24),
                           out_dir=str(tmp_path / "out"), epochs=1, batch_size=4, max_new_tokens=2,
                           score_base=False, progress=False, crop="prompt-left")
    results = dpo.finetune(cfg)
    assert results["data"]["train"] == {"examples": 21, "dropped": 0, "cropped": 21,
                                        "trained_tokens": results["data"]["train"]["trained_tokens"]}
    assert results["data"]["train"]["trained_tokens"] >= 21 * 2 * 2  # each response and its end-of-text
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["chosen_logp"] < 0 and records[0]["rejected_logp"] < 0


def test_instruct_reports_what_it_cuts(short_base, tmp_path, capsys):
    long = " ".join(["word"] * 40)
    data = tmp_path / "i.json"
    data.write_text(json.dumps([{"instruction": f"{long} {i}" if i % 2 else f"say {i}", "output": "yes"}
                                for i in range(20)]))
    cfg = instruct.InstructConfig.of(init_from=str(short_base), data=str(data), out_dir=str(tmp_path / "out"),
                                     epochs=1, batch_size=2, max_new_tokens=2, progress=False, crop="prompt-left",
                                     mask_prompt=True)
    results = instruct.finetune(cfg)
    out = capsys.readouterr().out
    train = results["data"]["train"]
    assert train["dropped"] == 0 and train["cropped"] > 0 and "trained tokens" in out
    assert json.loads((tmp_path / "out" / "task.json").read_text())["data"] == results["data"]
