"""The simulated model using a function tool by itself, the way a real model uses a document-search tool.

A user turn with words (a scripted transcript, or a user `input_text` message that is not a document) that the
documents in the conversation (user messages whose text starts with `<document`) do not answer is looked up with
the session's first function tool; its output is then spoken back, the sentence that best matches the turn.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable

from .answers import sentences, shorten
from .items import ItemRecord

DOCUMENT_PREFIX = "<document"
DEFAULT_ARGUMENT = "query"
MIN_WORD_LENGTH = 4
ANSWERED_SHARE = 0.5  # a document answers a turn holding at least half of its significant words
DOCUMENTS_ANSWER_PREFIX = "From the documents: "
DOCUMENT_ANSWER_PREFIX = "From the document: "
NOT_FOUND_ANSWER = "I could not find that in the documents."
WAITING_ANSWER = "I am still looking that up in the documents."

STOPWORDS = frozenset("""
    about above after again also been before being both could does doing done down each from further have having
    here hers herself himself into itself just know like many more most much must only other ours ourselves over
    please same should some such tell than that their theirs them themselves then there these they this those
    through under until very want were what when where which while whom whose will with would your yours yourself
""".split())

_WORD_RE = re.compile(r"\w+")
# An output that reports a failed search: "No passage ... matches", "Nothing found", "No results".
_NOT_FOUND_RE = re.compile(
    r"^\W*(?:(?:no|none|nothing)\b[^.!?\n]*?\b(?:found|match\w*|results?|passages?|documents?|hits?|entries|entry)\b"
    r"|not\s+found\b|(?:i\s+)?(?:could|can)\s*(?:not|n't|’t)\s+find\b|unable\s+to\s+find\b)",
    re.IGNORECASE,
)


@dataclass
class Turn:
    """The latest user turn: its item and what was said (None: nothing the model can read)."""

    record: ItemRecord
    text: str | None


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def significant_words(text: str) -> list[str]:
    """Distinct words of 4+ letters that are not stopwords, in order."""
    seen: dict[str, None] = {}
    for word in words(text):
        if len(word) >= MIN_WORD_LENGTH and word not in STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)


def _message_text(item: dict) -> str:
    return "\n".join(p.get("text") or "" for p in item.get("content") or []
                     if isinstance(p, dict) and p.get("type") == "input_text")


def is_document(record: ItemRecord) -> bool:
    item = record.item
    return (item.get("type") == "message" and item.get("role") == "user"
            and _message_text(item).lstrip().lower().startswith(DOCUMENT_PREFIX))


def documents(records: Iterable[ItemRecord]) -> list[str]:
    return [_message_text(r.item) for r in records if is_document(r)]


def latest_turn(records: list[ItemRecord]) -> Turn | None:
    """The newest user message that is not a document, with its words: the scripted transcript of spoken
    audio, else its input_text."""
    for record in reversed(records):
        item = record.item
        if item.get("type") != "message" or item.get("role") != "user" or is_document(record):
            continue
        text = record.spoken or _message_text(item)
        return Turn(record, text if text.strip() else None)
    return None


def answering_document(turn_text: str, docs: list[str]) -> str | None:
    """The document holding the most of the turn's significant words, if it holds at least half of them."""
    wanted = significant_words(turn_text)
    if not wanted:
        return None
    best, best_count = None, 0
    for doc in docs:
        present = set(words(doc))
        count = sum(1 for w in wanted if w in present)
        if count > best_count:
            best, best_count = doc, count
    if best is not None and best_count >= ANSWERED_SHARE * len(wanted):
        return best
    return None


def function_tools(params: dict, session: dict) -> list[dict]:
    """The function tools of a response: its own `tools` if given, else the session's."""
    tools = params["tools"] if "tools" in params else session.get("tools")
    if not isinstance(tools, list):
        return []
    return [t for t in tools if isinstance(t, dict) and t.get("type", "function") == "function"
            and isinstance(t.get("name"), str)]


def tool_for_turn(params: dict, session: dict) -> dict | None:
    """The tool the model would call: none with tool_choice "none", the named one for a function
    tool_choice, else the first function tool."""
    tools = function_tools(params, session)
    choice = params["tool_choice"] if "tool_choice" in params else session.get("tool_choice", "auto")
    if choice == "none" or not tools:
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        return next((t for t in tools if t["name"] == choice.get("name")), None)
    return tools[0]


def _is_string_schema(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def argument_name(tool: dict) -> str:
    """The tool's first required string property, else its first string property, else "query"."""
    parameters = tool.get("parameters") if isinstance(tool.get("parameters"), dict) else {}
    properties = parameters.get("properties") if isinstance(parameters.get("properties"), dict) else {}
    required = parameters.get("required") if isinstance(parameters.get("required"), list) else []
    strings = [name for name, schema in properties.items() if _is_string_schema(schema)]
    for name in strings:
        if name in required:
            return name
    return strings[0] if strings else DEFAULT_ARGUMENT


def trim_punctuation(text: str) -> str:
    """The text without whitespace and punctuation around it ("What is it?" -> "What is it")."""
    def edge(ch: str) -> bool:
        return ch.isspace() or unicodedata.category(ch).startswith("P")

    start, end = 0, len(text)
    while start < end and edge(text[start]):
        start += 1
    while end > start and edge(text[end - 1]):
        end -= 1
    return text[start:end]


def call_arguments(tool: dict, turn_text: str) -> tuple[str, str]:
    """(JSON arguments, the query in them)."""
    query = trim_punctuation(" ".join(turn_text.split()))
    return json.dumps({argument_name(tool): query}), query


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def output_text(output: str) -> str:
    """The readable text of a tool output: JSON gives its string values, one paragraph each."""
    try:
        data = json.loads(output)
    except (ValueError, TypeError, RecursionError):
        return output
    return "\n\n".join(s for s in _strings(data) if s.strip())


def _shared(text: str, wanted: list[str], echo: str) -> int:
    """How many of `wanted` are in `text`, once an echo of the query (the search repeating it) is removed."""
    flat = f" {' '.join(words(text))} "
    if echo.strip():
        flat = flat.replace(f" {echo} ", "  ")
    present = set(flat.split())
    return sum(1 for w in wanted if w in present)


def best_sentence(text: str, turn_text: str, query: str = "") -> str | None:
    """The sentence sharing the most significant words with the turn (the first of equals); None if
    no sentence shares one. Labels ending in ':' do not count as sentences."""
    wanted = significant_words(turn_text)
    echo = " ".join(words(query))
    best, best_count = None, 0
    for sentence in sentences(text):
        if sentence.endswith(":"):
            continue
        count = _shared(sentence, wanted, echo)
        if count > best_count:
            best, best_count = sentence, count
    return best


def says_nothing_found(text: str) -> bool:
    return not text.strip() or bool(_NOT_FOUND_RE.match(text))


def tool_output_answer(output: str, turn_text: str, query: str) -> str:
    """What the model says after its own search: the best-matching sentence of the output, or that the
    documents did not say."""
    text = output_text(output)
    if says_nothing_found(text):
        return NOT_FOUND_ANSWER
    sentence = best_sentence(text, turn_text, query)
    if sentence is None:
        return NOT_FOUND_ANSWER
    return DOCUMENTS_ANSWER_PREFIX + shorten(sentence)


def document_sentence_answer(document: str, turn_text: str) -> str | None:
    """The sentence of an inline document that best answers the turn."""
    sentence = best_sentence(document, turn_text)
    return DOCUMENT_ANSWER_PREFIX + shorten(sentence) if sentence else None
