"""Exact o200k_base token counts, offline (bpe-openai bundles the vocabulary)."""

import functools
import re

import bpe_openai

# bpe-openai refuses very long inputs in one call; count in pieces cut just
# before a whitespace character, where o200k's pre-tokenizer splits anyway.
CHUNK_CHARS = 100_000
_SPACE = re.compile(r"\s")


@functools.cache
def _encoding():
    return bpe_openai.get_encoding("o200k_base")


def _chunks(text):
    start = 0
    while len(text) - start > CHUNK_CHARS:
        cut = start + CHUNK_CHARS
        match = _SPACE.search(text, cut)
        if match is None:
            break
        yield text[start : match.start()]
        start = match.start()
    yield text[start:]


def count_tokens(text):
    """Number of o200k_base tokens in text."""
    if not text:
        return 0
    enc = _encoding()
    return sum(len(enc.encode_ordinary(piece)) for piece in _chunks(text))
