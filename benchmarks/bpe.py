"""Bytes per token of your own BPE against GPT-2's, on English and on Chinese text held out from training.

    python benchmarks/bpe.py                               # Shakespeare + the system's zh_CN message catalogs
    python benchmarks/bpe.py --english a.txt --chinese zh/*.txt --vocab-size 32768

English defaults to the embedded Shakespeare; Chinese to the translated messages of the zh_CN gettext
catalogs this machine ships (/usr/share/locale/zh_CN/LC_MESSAGES/*.mo: git, coreutils, bash, ...; real
Chinese, if of one domain). Each side is cut 90/10 into training and held-out documents; one BPE is
trained on both training parts (`jaxgpt.tokenizer.bpe.train_bpe`) and both tokenizers are measured on the held-out
parts. Higher bytes per token: each token carries more text, so a context holds more and a step sees more.
"""

import argparse
import gettext
import glob
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxgpt.tokenizer.bpe import bytes_per_token, train_bpe
from jaxgpt.data.shakespeare import shakespeare_plays
from jaxgpt.tokenizer.kinds import GPT2Tokenizer

CATALOGS = "/usr/share/locale/zh_CN/LC_MESSAGES/*.mo"


def catalog_messages(paths: list[str]) -> list[str]:
    """The translated strings of gettext catalogs, as documents of about 2 KB."""
    texts = []
    for p in sorted(paths):
        with open(p, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # msgid -> msgstr
        texts += [v for k, v in catalog.items() if k and isinstance(v, str) and v.strip()]
    docs, cur = [], ""
    for t in texts:
        cur += t + "\n"
        if len(cur) > 2000:
            docs.append(cur)
            cur = ""
    return docs + ([cur] if cur else [])


def split(docs: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    docs = docs[:]
    random.Random(seed).shuffle(docs)
    cut = int(0.9 * len(docs))
    return docs[:cut], docs[cut:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--english", nargs="*", default=None, help="text files (default: the embedded Shakespeare)")
    ap.add_argument("--chinese", nargs="*", default=None, help=f"text files (default: the messages of {CATALOGS})")
    ap.add_argument("--vocab-size", type=int, default=8192)
    args = ap.parse_args()
    english = ([Path(p).read_text() for p in args.english] if args.english else
               [p.text[i:i + 2000] for p in shakespeare_plays() for i in range(0, len(p.text), 2000)])
    chinese = [Path(p).read_text() for p in args.chinese] if args.chinese else catalog_messages(glob.glob(CATALOGS))
    if not chinese:
        sys.exit(f"no Chinese text: pass --chinese FILES (no catalogs at {CATALOGS})")
    (en_train, en_test), (zh_train, zh_test) = split(english), split(chinese)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ours = train_bpe(en_train + zh_train, args.vocab_size, Path(tmp) / "bpe")
        seconds = time.perf_counter() - t0
    mb = sum(len(d.encode()) for d in en_train + zh_train) / 1e6
    print(f"trained a {ours.vocab_size}-token byte-level BPE on {mb:.1f} MB ({len(en_train)} English and "
          f"{len(zh_train)} Chinese documents) in {seconds:.1f} s\n")
    print("| held-out text | bytes | GPT-2 bytes/token | own BPE bytes/token | own / GPT-2 |")
    print("|---|---:|---:|---:|---:|")
    gpt2 = GPT2Tokenizer()
    for name, docs in (("English", en_test), ("Chinese", zh_test)):
        g, o = bytes_per_token(gpt2, docs), bytes_per_token(ours, docs)
        print(f"| {name} | {sum(len(d.encode()) for d in docs):,} | {g:.2f} | {o:.2f} | {o / g:.2f} |")


if __name__ == "__main__":
    main()
