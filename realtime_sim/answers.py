"""What the simulated assistant says, drawn from the conversation."""

from __future__ import annotations

import json
import re
from typing import Iterable

from .items import ItemRecord

DEFAULT_ANSWER = "Hello! I am the local realtime simulator, and I can hear you clearly."
MAX_WORDS = 24

_TAG_RE = re.compile(r"<[^>]+>")
_MD_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_BRACKET_LABEL_RE = re.compile(r"\[[^\]]{0,40}\]")
_LINE_PREFIX_RE = re.compile(r"^\s*(?:#{1,6}\s*|>\s*|[-*+]\s+|\d+[.)]\s+)")
# "Document:", "Title: Handbook" style labels at the start of a line.
_LABEL_RE = re.compile(r"^\s*[A-Za-z][\w ]{0,30}:\s*(?=\S|$)")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n{2,}|\n(?=\s*[A-Z])")
_WORD_RE = re.compile(r"\S+")


def words_of(text: str) -> list[str]:
    """Word-level deltas: the first word bare, the next ones with a leading space."""
    words = _WORD_RE.findall(text)
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def strip_markup(text: str) -> str:
    text = _TAG_RE.sub(" ", text)
    text = _MD_LINK_RE.sub(r"\1", text)
    text = _BRACKET_LABEL_RE.sub(" ", text)
    lines = []
    for line in text.splitlines():
        line = _LINE_PREFIX_RE.sub("", line)
        line = _LABEL_RE.sub("", line)
        line = re.sub(r"[*_`~|]+", "", line)
        lines.append(line.strip())
    return "\n".join(lines)


def sentences(text: str) -> list[str]:
    """Readable sentences of a document, markup and labels removed."""
    found = []
    for chunk in _SENTENCE_SPLIT_RE.split(strip_markup(text)):
        sentence = " ".join(chunk.split())
        if len(sentence.split()) >= 3:
            found.append(sentence)
    return found


def shorten(sentence: str) -> str:
    words = sentence.split()
    if len(words) <= MAX_WORDS:
        return sentence
    return " ".join(words[:MAX_WORDS]).rstrip(",;:") + "..."


def latest_document(records: Iterable[ItemRecord]) -> str | None:
    """Text of the most recent user/system message that holds input_text."""
    latest = None
    for record in records:
        item = record.item
        if item.get("type") != "message" or item.get("role") not in ("user", "system"):
            continue
        texts = [p.get("text") or "" for p in item.get("content", []) if p.get("type") == "input_text"]
        if any(t.strip() for t in texts):
            latest = "\n".join(texts)
    return latest


def document_answer(document: str, turn: int) -> str | None:
    found = sentences(document)
    if not found:
        return None
    return "From the document: " + shorten(found[turn % len(found)])


def function_output_answer(output: str) -> str:
    """Speak a tool result: JSON is flattened to "key value" phrases."""
    try:
        data = json.loads(output)
    except (ValueError, TypeError):
        data = output
    if isinstance(data, dict):
        phrase = ", ".join(f"{k} {v}" for k, v in data.items())
    elif isinstance(data, list):
        phrase = ", ".join(str(v) for v in data)
    else:
        phrase = str(data)
    return "Here is what I found: " + shorten(" ".join(phrase.split()) or "nothing")


def pick_answer(records: list[ItemRecord], document_turn: int) -> tuple[str, bool]:
    """(answer text, whether a document sentence was used)."""
    if records and records[-1].item.get("type") == "function_call_output":
        return function_output_answer(str(records[-1].item.get("output", ""))), False
    document = latest_document(records)
    if document:
        answer = document_answer(document, document_turn)
        if answer:
            return answer, True
    return DEFAULT_ANSWER, False
