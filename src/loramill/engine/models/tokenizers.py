"""Tokenizers built locally, with no download, for the tiny models.

They use the real tokenizer classes (CLIP's byte-level BPE, T5's Unigram) with a small vocabulary, so
the loading code that reads a real model folder reads these too. Words outside the vocabulary still
tokenize: CLIP falls back to single bytes, T5 to single characters.
"""

from __future__ import annotations

import string

_COMMON_WORDS = (
    "a an the of and with in on at photo portrait picture painting style dog cat man woman person face "
    "smiling white background red blue green sks tsuki_advtr drawing sketch city castle kremlin"
).split()


def clip_tokenizer(model_max_length: int = 77, words: tuple[str, ...] = ()):
    """A CLIPTokenizer over the 256 byte symbols (plus their end-of-word forms), a few common words and ``words``."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in alphabet:
        vocab.setdefault(symbol, len(vocab))
    for symbol in alphabet:
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    # Whole-word merges for common words, built left to right so BPE can reach them.
    for word in (*_COMMON_WORDS, *words):
        if not word.isascii() or not word.isalpha():
            continue
        current = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + "</w>" if i == len(word) - 1 else ch
            merged = current + right
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((current, right))
            current = merged
    # The BPE model takes merges as pairs; transformers' annotation lists only strings.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)  # type: ignore[arg-type]


def t5_tokenizer(model_max_length: int = 512, words: tuple[str, ...] = ()):
    """A T5Tokenizer (Unigram) over letters, digits, punctuation, a few common words and ``words``."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    symbols = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += [(ch, -5.0) for ch in symbols]
    pieces += [("\u2581" + ch, -4.0) for ch in symbols]
    pieces += [("\u2581" + w, -1.0) for w in dict.fromkeys((*_COMMON_WORDS, *words))]
    extra_ids = 8
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]
    return T5Tokenizer(vocab=pieces, extra_ids=extra_ids, model_max_length=model_max_length)
