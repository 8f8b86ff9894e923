"""The verifiable instruction set: determinism, balance, every kind's answers recomputed here, scoring."""

import re
import string
from collections import Counter

import pytest

from jaxgpt.finetune import tasks
from jaxgpt.finetune.scoring import exact_match, normalize, score, token_f1
from jaxgpt.finetune.tasks import KINDS, generate_tasks, kind_of


@pytest.fixture(scope="module")
def examples() -> list[dict[str, str]]:
    return generate_tasks(1000, seed=0)


def by_kind(examples: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    groups: dict[str, list[dict[str, str]]] = {kind: [] for kind in KINDS}
    for example in examples:
        groups[kind_of(example)].append(example)
    return groups


def test_deterministic_and_seeded(examples):
    assert generate_tasks(1000, seed=0) == examples
    assert generate_tasks(1000, seed=1) != examples
    assert generate_tasks(50, seed=3) == generate_tasks(50, seed=3)
    assert generate_tasks(0) == []
    with pytest.raises(ValueError):
        generate_tasks(-1)


@pytest.mark.parametrize("n", [1, 13, 200, 1000])
def test_n_respected(n):
    assert len(generate_tasks(n, seed=5)) == n


def test_shape_types_and_ascii(examples):
    assert len(KINDS) >= 10 and len(set(KINDS)) == len(KINDS)
    for example in examples:
        assert set(example) == {"instruction", "input", "output"}
        assert all(isinstance(value, str) for value in example.values())
        assert example["instruction"].strip() and example["output"].strip()
        assert all(value.isascii() and "\n" not in value for value in example.values())
        assert example["output"] == example["output"].strip()


def test_no_duplicates(examples):
    keys = [(e["instruction"], e["input"], e["output"]) for e in examples]
    assert len(set(keys)) == len(keys)
    big = generate_tasks(3000, seed=2)  # beyond what the small kinds can supply: they drop out
    assert len({(e["instruction"], e["input"], e["output"]) for e in big}) == 3000


def test_kinds_balanced_and_interleaved(examples):
    counts = Counter(kind_of(e) for e in examples)
    assert set(counts) == set(KINDS)  # None (an unrecognised instruction) would show up here
    assert max(counts.values()) - min(counts.values()) <= 1
    first_round = [kind_of(e) for e in examples[: len(KINDS)]]
    assert sorted(first_round) == sorted(KINDS)
    assert first_round != list(KINDS)  # shuffled, not in declaration order
    assert [kind_of(e) for e in examples[len(KINDS): 2 * len(KINDS)]] != first_round


def numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def expected_plural(noun: str) -> str:
    known = {"child": "children", "mouse": "mice", "sheep": "sheep", "knife": "knives", "city": "cities",
             "box": "boxes", "church": "churches", "key": "keys", "boy": "boys", "apple": "apples"}
    if noun in known:
        return known[noun]
    if noun in tasks.IRREGULAR_PLURALS:
        return tasks.IRREGULAR_PLURALS[noun]
    if noun[-1] in "sxz" or noun[-2:] in ("ch", "sh"):
        return noun + "es"
    if noun[-1] == "y" and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def check(kind: str, example: dict[str, str]) -> None:
    instruction, text, out = example["instruction"], example["input"], example["output"]
    words = text.split()
    if kind in ("add", "multiply"):
        assert text == ""
        a, b = numbers(instruction)
        assert int(out) == (a + b if kind == "add" else a * b) and out == str(int(out))
        assert (0 <= a <= 20 and 0 <= b <= 20) if kind == "add" else (0 <= a <= 9 and 0 <= b <= 9)
    elif kind == "subtract":
        a, b = numbers(text)
        assert out == str(a - b) and a - b >= 0
    elif kind == "larger":
        a, b = numbers(text)
        assert a != b and out == str(a if a > b else b)
    elif kind == "reverse_words":
        assert 3 <= len(words) <= 5 and out.split() == words[::-1]
    elif kind == "sort_words":
        result = out.split()
        assert 3 <= len(words) <= 5 and Counter(result) == Counter(words)
        assert all(x <= y for x, y in zip(result, result[1:]))
    elif kind == "upper_case":
        assert text.islower() and out == "".join(c.upper() if c.isalpha() else c for c in text)
    elif kind == "lower_case":
        assert text != out and out == "".join(c.lower() if c.isalpha() else c for c in text)
    elif kind == "plural":
        assert len(words) == 1 and out == expected_plural(text)
    elif kind == "count_letters":
        assert text.isalpha() and out == str(sum(1 for c in text if c in string.ascii_letters))
    elif kind == "count_words":
        assert out == str(len(words)) and len(words) >= 2
    elif kind == "first_letter":
        assert text.isalpha() and out == text[:1]
    elif kind == "repeat_word":
        (count,) = numbers(instruction)
        assert count >= 2 and out.split() == [text] * count
    elif kind == "antonym":
        assert out != text and tasks.ANTONYMS[out] == text
    else:
        raise AssertionError(f"no check for kind {kind}")


def test_every_kind_correct(examples):
    groups = by_kind(examples)
    for kind in KINDS:
        assert groups[kind], kind
        for example in groups[kind]:
            check(kind, example)


def test_answers_of_known_cases(examples):
    assert tasks.ANTONYMS["hot"] == "cold" and tasks.ANTONYMS["cold"] == "hot"
    assert all(tasks.ANTONYMS[tasks.ANTONYMS[w]] == w for w in tasks.ANTONYMS)
    for noun, want in [("city", "cities"), ("box", "boxes"), ("dish", "dishes"), ("key", "keys"),
                       ("child", "children"), ("wolf", "wolves"), ("apple", "apples"), ("fox", "foxes")]:
        assert tasks.plural(noun) == want
    assert all(w.isalpha() and w.islower() for w in tasks.VOCAB)
    assert len(set(tasks.VOCAB)) == len(tasks.VOCAB)
    # The instruction templates are what tells the kinds apart; they must not overlap.
    assert kind_of({"instruction": "What is 3 plus 4?"}) == "add"
    assert kind_of({"instruction": "Repeat this word 3 times."}) == "repeat_word"
    assert kind_of({"instruction": "Write a poem."}) is None


def test_normalize_and_exact_match():
    assert normalize("  hello   world. ") == "hello world"
    assert normalize("a\t b\n c") == "a b c"
    assert normalize("end..") == "end."  # only one trailing period
    assert normalize("\u201cquoted\u201d \u2018x\u2019") == "\"quoted\" 'x'"
    assert exact_match(" 12 ", "12")
    assert exact_match("apple  river.", "apple river")
    assert not exact_match("HELLO", "hello")  # case is kept: case tasks depend on it
    assert not exact_match("12", "13")


def test_token_f1():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("The cat, sat.", "the cat sat") == 1.0  # lower-cased, punctuation stripped
    assert token_f1("dog", "cat") == 0.0
    # pred {a, b, c}, ref {a, b, d, e}: overlap 2, precision 2/3, recall 1/2 -> F1 = 4/7.
    assert token_f1("a b c", "a b d e") == pytest.approx(4 / 7)
    # Multiset: pred "a a", ref "a": overlap 1, precision 1/2, recall 1 -> 2/3.
    assert token_f1("a a", "a") == pytest.approx(2 / 3)
    assert token_f1("", "cat") == 0.0
    assert token_f1("cat", "") == 0.0
    assert token_f1("", "  ") == 1.0


def test_score():
    result = score(["12", "apple river", "HELLO"], ["12.", "apple stone", "hello"])
    assert result["n"] == 3
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["token_f1"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"])
    assert score([], [])["n"] == 0


def test_perfect_predictions_score_one(examples):
    refs = [e["output"] for e in examples]
    assert score(refs, refs) == {"exact_match": 1.0, "token_f1": 1.0, "n": len(refs)}
