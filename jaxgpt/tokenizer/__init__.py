"""Tokenizers: text <-> token ids (base: the shared contract; kinds: GPT-2, char, simple and the choice;
bpe: a byte-level BPE trained on your corpus)."""
