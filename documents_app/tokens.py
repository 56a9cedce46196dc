"""Exact o200k_base token counts, offline (bpe-openai bundles the vocabulary)."""

import functools
import re

import bpe_openai

# bpe-openai refuses inputs of a million characters or more in one call; count in pieces cut just
# before a whitespace character, where o200k's pre-tokenizer splits anyway. A run with no whitespace
# for HARD_CHARS is cut inside it: its count may be off by a token at each such cut.
CHUNK_CHARS = 100_000
HARD_CHARS = 500_000
_SPACE = re.compile(r"\s")


@functools.cache
def _encoding():
    return bpe_openai.get_encoding("o200k_base")


def _chunks(text):
    start = 0
    while len(text) - start > CHUNK_CHARS:
        match = _SPACE.search(text, start + CHUNK_CHARS, start + HARD_CHARS)
        end = match.start() if match else start + HARD_CHARS
        yield text[start:end]
        start = end
    yield text[start:]


def count_tokens(text):
    """Number of o200k_base tokens in text."""
    if not text:
        return 0
    enc = _encoding()
    return sum(len(enc.encode_ordinary(piece)) for piece in _chunks(text))
