"""A document's text cut into passages for search: a few hundred tokens each, a little overlap,
each knowing where it came from (the PDF page, or the nearest heading).

Passages never cross a page or a heading: a document is first split into
sections at those, then each section is packed sentence by sentence up to
TARGET_TOKENS, the next passage starting again on the last sentences of the
one before (at most OVERLAP_TOKENS of them). Token counts are exact (o200k).
"""

import re
from dataclasses import dataclass

from .tokens import count_tokens

TARGET_TOKENS = 300
OVERLAP_TOKENS = 40
MAX_SECTION_CHARS = 300

_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
# Passages are packed from sentences (a sentence is never cut unless it alone is too long).
_PARAGRAPHS = re.compile(r"\n\s*\n")
# A sentence ends at . ! ? ; : before a space, or at a full-width stop (Chinese, Japanese), which takes none.
_SENTENCES = re.compile(r"(?<=[.!?;:])\s+|(?<=[。！？；])\s*")


@dataclass(frozen=True)
class Section:
    start: int
    end: int
    page: int | None
    heading: str


@dataclass(frozen=True)
class Piece:
    """One passage: its place in the document, its text and exact token count, where it came from."""

    start: int
    end: int
    text: str
    tokens: int
    page: int | None
    section: str


def sections(text, kind, outline=None):
    """The document split where pages or headings begin; each part labelled with its page or heading."""
    outline = outline or {}
    marks = []  # (offset, page, heading)
    if outline.get("pages"):
        marks = [(offset, page, "") for offset, page in outline["pages"]]
    elif kind == "markdown":
        marks = [(m.start(), None, m.group(2).strip()) for m in _MD_HEADING.finditer(text)]
    elif outline.get("headings"):
        marks = [(offset, None, heading) for offset, heading in _find_lines(text, outline["headings"])]
    marks = sorted(m for m in marks if 0 <= m[0] < len(text))
    if not marks or marks[0][0] > 0:
        # Before the first page or heading: the document's opening (page 1 of a PDF).
        marks.insert(0, (0, 1 if outline.get("pages") else None, ""))
    found = []
    for index, (start, page, heading) in enumerate(marks):
        end = marks[index + 1][0] if index + 1 < len(marks) else len(text)
        if text[start:end].strip():
            found.append(Section(start, end, page, " ".join(heading.split())[:MAX_SECTION_CHARS]))
    return found


def _find_lines(text, headings):
    """Where each heading stands as a line of the text, in order (a heading not found is skipped)."""
    places, position = [], 0
    lines = [(m.start(), " ".join(m.group().split())) for m in re.finditer(r"[^\n]+", text)]
    for heading in headings:
        wanted = " ".join(heading.split())
        if not wanted:
            continue
        for index in range(position, len(lines)):
            if lines[index][1] == wanted:
                places.append((lines[index][0], wanted))
                position = index + 1
                break
    return places


def _units(text, start, end):
    """(start, end) spans of the sentences of each paragraph, a sentence too long for a passage cut up."""
    spans = []
    cursor = start
    for match in [*_PARAGRAPHS.finditer(text, start, end), None]:
        stop = match.start() if match else end
        sentence_start = cursor
        for sentence in [*_SENTENCES.finditer(text, cursor, stop), None]:
            sentence_end = sentence.start() if sentence else stop
            if text[sentence_start:sentence_end].strip():
                spans.extend(_split_words(text, sentence_start, sentence_end))
            sentence_start = sentence.end() if sentence else stop
        cursor = match.end() if match else end
    return spans


def _split_words(text, start, end):
    """A sentence longer than a passage is cut at spaces, within 1,000 characters; a run with no space (Chinese,
    Japanese, a long code) where it still fits a passage."""
    if count_tokens(text[start:end]) <= TARGET_TOKENS:
        return [(start, end)]
    spans, cursor = [], start
    while cursor < end:
        stop = min(end, cursor + 1000)
        if stop < end:
            space = text.rfind(" ", cursor + 1, stop)
            stop = space if space > cursor else stop
        while stop - cursor > 1 and count_tokens(text[cursor:stop]) > TARGET_TOKENS:
            stop = cursor + (stop - cursor) // 2
        spans.append((cursor, stop))
        cursor = stop
    return spans


def split(text, kind="text", outline=None):
    """The passages of a document, in order."""
    pieces = []
    for section in sections(text, kind, outline):
        units = [(s, e, count_tokens(text[s:e])) for s, e in _units(text, section.start, section.end)]
        first = 0
        while first < len(units):
            last, total = first, units[first][2]
            while last + 1 < len(units) and total + units[last + 1][2] <= TARGET_TOKENS:
                last += 1
                total += units[last][2]
            start, end = units[first][0], units[last][1]
            body = text[start:end].strip()
            pieces.append(Piece(start, end, body, count_tokens(body), section.page, section.heading))
            if last + 1 >= len(units):
                break
            # The next passage starts on the last units of this one, about OVERLAP_TOKENS of them.
            back, overlap = last, 0
            while back > first and overlap + units[back][2] <= OVERLAP_TOKENS:
                overlap += units[back][2]
                back -= 1
            first = back + 1 if back < last else last + 1
    return pieces


def label(title, page, section):
    """How a passage is named to the model and on the page: the title, then the page or the section."""
    where = f"page {page}" if page else (f"section “{section}”" if section else "")
    return f"{title}, {where}" if where else title
