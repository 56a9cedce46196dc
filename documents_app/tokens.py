"""Exact o200k_base token counts, offline (bpe-openai bundles the vocabulary)."""

import functools
import re

import bpe_openai

# bpe-openai refuses an input of a million characters or more, or one that makes more than 200,000
# tokens (a long run of base64, emoji or CJK without a space makes 0.7 to 4 a character); count in
# pieces of at most HARD_CHARS (4 tokens a character at worst keeps each under that), cut just before a
# whitespace character where there is one, where o200k's pre-tokenizer splits anyway. A run with no
# whitespace for HARD_CHARS is cut inside it: its count may be off by a token at each such cut.
CHUNK_CHARS = 40_000
HARD_CHARS = 50_000
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
