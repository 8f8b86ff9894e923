"""A generated instruction set whose answers can be checked exactly (scoring.py scores responses).

Instruction finetuning (the book's chapter 7) is usually judged by a second, larger LLM. These tasks
need no judge: each example's `output` is computed, short, plain ASCII and one line, so a model's
response can be scored by exact match (after `normalize`) and by SQuAD-style token F1.

`generate_tasks` makes Alpaca-format records (`instruction`, `input`, `output`) from a seed, with the
kinds in `KINDS` taking turns (each round visits every kind once, in a shuffled order). The kinds range
from easy (upper case, first letter, repeat a word) to hard for a small model (sort words, count
letters). Each kind has one fixed instruction template (`TEMPLATES`), so `kind_of` can recover the kind.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable

NOUNS = """
apple river stone tree house book door window car bird dog cat horse cow pig chair table cup plate spoon
hat coat shoe ship boat road hill lake star moon cloud flower garden farm field forest mountain island
bridge tower king queen teacher doctor farmer baker song game ball bell cake egg lamp map pen pencil ring
rock rope seed snake tiger lion eagle frog duck rabbit bottle basket candle carpet drum flag gate key boy
toy monkey valley box fox bus dish brush church glass watch bench peach beach class match city baby party
story family berry cherry lady puppy penny pony country library child man woman mouse foot tooth goose
person sheep fish deer ox leaf knife wolf loaf shelf potato tomato hero
""".split()

IRREGULAR_PLURALS = {
    "child": "children", "man": "men", "woman": "women", "mouse": "mice", "foot": "feet", "tooth": "teeth",
    "goose": "geese", "person": "people", "sheep": "sheep", "fish": "fish", "deer": "deer", "ox": "oxen",
    "leaf": "leaves", "knife": "knives", "wolf": "wolves", "loaf": "loaves", "shelf": "shelves",
    "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes",
}

# Each word appears in one pair only, so every word has exactly one opposite.
_OPPOSITE_PAIRS = """
hot:cold big:small tall:short fast:slow happy:sad old:young hard:soft light:dark early:late rich:poor
strong:weak wet:dry full:empty open:closed clean:dirty loud:quiet thick:thin wide:narrow deep:shallow
high:low good:bad right:wrong true:false first:last up:down in:out day:night win:lose buy:sell push:pull
give:take begin:end above:below inside:outside before:after always:never near:far north:south east:west
love:hate laugh:cry sweet:sour safe:dangerous cheap:expensive easy:difficult friend:enemy
question:answer alive:dead sharp:dull smooth:rough asleep:awake arrive:leave accept:refuse
remember:forget entrance:exit rise:fall more:less
""".split()
ANTONYMS = {a: b for pair in _OPPOSITE_PAIRS for a, b in [pair.split(":")]}
ANTONYMS.update({b: a for a, b in list(ANTONYMS.items())})
assert len(ANTONYMS) == 2 * len(_OPPOSITE_PAIRS), "a word is in two opposite pairs"
_OPPOSITE_WORDS = list(ANTONYMS)  # dict order: fixed by the source text, never a set's

ADJECTIVES = """
hot cold big small tall short fast slow happy sad old young hard soft light dark early late rich poor
strong weak wet dry full empty open closed clean dirty loud quiet thick thin wide narrow deep shallow
high low good bad sweet sour safe cheap easy sharp smooth rough
""".split()

# The words that word tasks draw from: lowercase letters only, no repeats, in a fixed order.
VOCAB = list(dict.fromkeys(NOUNS + ADJECTIVES))

TEMPLATES: dict[str, str] = {
    "add": "What is {a} plus {b}?",
    "subtract": "Subtract the second number from the first.",
    "multiply": "What is {a} times {b}?",
    "larger": "Which of these two numbers is larger?",
    "reverse_words": "Reverse the order of these words.",
    "sort_words": "Sort these words in alphabetical order.",
    "upper_case": "Convert this text to upper case.",
    "lower_case": "Convert this text to lower case.",
    "plural": "Give the plural form of this noun.",
    "count_letters": "How many letters are in this word?",
    "count_words": "How many words are in this text?",
    "first_letter": "What is the first letter of this word?",
    "repeat_word": "Repeat this word {count} times.",
    "antonym": "Give the opposite of this word.",
}
KINDS: tuple[str, ...] = tuple(TEMPLATES)

Example = tuple[str, str, str]  # (instruction, input, output)


def plural(noun: str) -> str:
    """The plural of a noun: the irregular table, else -es after s/x/z/ch/sh, consonant+y -> ies, else +s."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return rng.sample(VOCAB, rng.randint(low, high))


def _add(rng: random.Random) -> Example:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    return TEMPLATES["add"].format(a=a, b=b), "", str(a + b)


def _subtract(rng: random.Random) -> Example:
    a = rng.randint(0, 20)
    b = rng.randint(0, a)
    return TEMPLATES["subtract"], f"{a} and {b}", str(a - b)


def _multiply(rng: random.Random) -> Example:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return TEMPLATES["multiply"].format(a=a, b=b), "", str(a * b)


def _larger(rng: random.Random) -> Example:
    a, b = rng.sample(range(100), 2)
    return TEMPLATES["larger"], f"{a} and {b}", str(max(a, b))


def _reverse_words(rng: random.Random) -> Example:
    words = _words(rng, 3, 5)
    return TEMPLATES["reverse_words"], " ".join(words), " ".join(reversed(words))


def _sort_words(rng: random.Random) -> Example:
    words = _words(rng, 3, 5)
    return TEMPLATES["sort_words"], " ".join(words), " ".join(sorted(words))


def _upper_case(rng: random.Random) -> Example:
    text = " ".join(_words(rng, 1, 3))
    return TEMPLATES["upper_case"], text, text.upper()


def _lower_case(rng: random.Random) -> Example:
    words = [w.upper() if rng.random() < 0.5 else w.capitalize() for w in _words(rng, 1, 3)]
    text = " ".join(words)
    return TEMPLATES["lower_case"], text, text.lower()


def _plural(rng: random.Random) -> Example:
    noun = rng.choice(NOUNS)
    return TEMPLATES["plural"], noun, plural(noun)


def _count_letters(rng: random.Random) -> Example:
    word = rng.choice(VOCAB)
    return TEMPLATES["count_letters"], word, str(len(word))


def _count_words(rng: random.Random) -> Example:
    words = [rng.choice(VOCAB) for _ in range(rng.randint(2, 8))]
    return TEMPLATES["count_words"], " ".join(words), str(len(words))


def _first_letter(rng: random.Random) -> Example:
    word = rng.choice(VOCAB)
    return TEMPLATES["first_letter"], word, word[0]


def _repeat_word(rng: random.Random) -> Example:
    word, count = rng.choice(VOCAB), rng.randint(2, 4)
    return TEMPLATES["repeat_word"].format(count=count), word, " ".join([word] * count)


def _antonym(rng: random.Random) -> Example:
    word = rng.choice(_OPPOSITE_WORDS)
    return TEMPLATES["antonym"], word, ANTONYMS[word]


# Each kind's generator is the function named after it: `_add` for "add" and so on.
_GENERATORS: dict[str, Callable[[random.Random], Example]] = {kind: globals()["_" + kind] for kind in KINDS}
_MAX_TRIES = 200  # draws that may all repeat earlier examples before a kind counts as used up


def generate_tasks(n: int = 1000, seed: int = 0) -> list[dict[str, str]]:
    """n Alpaca-format examples {"instruction", "input" (may be ""), "output"}, deterministic from seed.

    Kinds take turns in rounds, each round a fresh shuffle of the kinds, so any prefix is balanced. No
    two examples are identical; a kind whose distinct examples run out drops out of later rounds, and
    ValueError is raised when every kind has run out before n examples.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    active = list(KINDS)
    seen: set[Example] = set()
    examples: list[dict[str, str]] = []
    while len(examples) < n:
        if not active:
            raise ValueError(f"only {len(examples)} distinct examples can be generated, asked for {n}")
        order = active[:]
        rng.shuffle(order)
        for kind in order:
            if len(examples) == n:
                break
            for _ in range(_MAX_TRIES):
                example = _GENERATORS[kind](rng)
                if example not in seen:
                    seen.add(example)
                    instruction, input_text, output = example
                    examples.append({"instruction": instruction, "input": input_text, "output": output})
                    break
            else:
                active.remove(kind)
    return examples


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\d+)", re.escape(template))
    return re.compile(pattern + r"\Z")


_TEMPLATE_REGEXES = {kind: _template_regex(template) for kind, template in TEMPLATES.items()}


def kind_of(example: dict[str, str]) -> str | None:
    """The kind whose template produced the example's instruction, or None (for per-kind scores)."""
    for kind, regex in _TEMPLATE_REGEXES.items():
        if regex.match(example["instruction"]):
            return kind
    return None


# --- preference pairs: the right answer against a plausible wrong one (for DPO) -------------------------

def _near_number(answer: str, rng: random.Random) -> str:
    value = int(answer)
    offsets = [d for d in (-3, -2, -1, 1, 2, 3) if value + d >= 0]
    return str(value + rng.choice(offsets))


def _wrong_words(words: list[str], right: str, rng: random.Random) -> str:
    """Another order of the same words (the input's own order first, when that is wrong)."""
    if " ".join(words) != right:
        return " ".join(words)
    shuffled = words[:]
    while " ".join(shuffled) == right:
        rng.shuffle(shuffled)
    return " ".join(shuffled)


def wrong_answer(example: dict[str, str], rng: random.Random) -> str:
    """A plausible but wrong answer to a generated example: the mistake a weak model would make (a number
    off by a little, the words left in their order, the case unchanged, a regular plural, ...)."""
    kind, right, text = kind_of(example), example["output"], example["input"]
    if kind in ("add", "subtract", "multiply", "count_letters", "count_words"):
        return _near_number(right, rng)
    if kind == "larger":
        return str(min(int(n) for n in text.split(" and ")))
    if kind in ("reverse_words", "sort_words"):
        return _wrong_words(text.split(), right, rng)
    if kind in ("upper_case", "lower_case"):
        return text if text != right else text.swapcase()
    if kind == "plural":
        regular = text + "s"
        return regular if regular != right else text
    if kind == "first_letter":
        return text[-1] if text[-1] != right else rng.choice([c for c in string.ascii_lowercase if c != right])
    if kind == "repeat_word":
        words = right.split()
        return " ".join(words[:-1] if len(words) > 2 else words + words[:1])
    if kind == "antonym":
        return text
    raise ValueError(f"not a generated example: {example['instruction']!r}")


def preference_pairs(n: int = 1000, seed: int = 0) -> list[dict[str, str]]:
    """n preference records {"instruction", "input", "chosen", "rejected"}: the generated examples of
    `generate_tasks(n, seed)`, the right answer chosen over a plausible wrong one."""
    rng = random.Random(seed + 1)
    return [{"instruction": e["instruction"], "input": e["input"], "chosen": e["output"],
             "rejected": wrong_answer(e, rng)} for e in generate_tasks(n, seed)]
