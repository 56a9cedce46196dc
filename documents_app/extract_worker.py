"""The extraction child: parses one upload under resource limits.

Run as `python -m documents_app.extract_worker KIND MEMORY_BYTES CPU_SECONDS
MAX_CHARS MAX_PAGES` with the file's bytes on stdin; answers one JSON object on
stdout: {"ok": true, "text", "encoding", "pages"} or {"ok": false, "code",
"message"}. documents_app.extract starts it, and only that module should.

The parsers are plain functions (parse() and friends) so a benchmark can time
them in-process too. Needs no Django.
"""

import codecs
import io
import json
import os
import re
import resource
import signal
import sys
import zipfile
import zlib
from html.parser import HTMLParser
from xml.parsers import expat

from documents_app.extract import DOCX_MAX_UNCOMPRESSED, EXIT_MEMORY, ExtractionError, no_text, too_long

# --- normalisation ---------------------------------------------------------------

_LINE_BREAK = re.compile("[\x0b\x0c\x85\u2028\u2029]")
# C0 and C1 controls but tab and newline, DEL, the BOM / zero-width no-break
# space, non-characters; and lone surrogates, which cannot be stored or sent as UTF-8.
_UNWANTED = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff\ufffe\uffff\ud800-\udfff]")
_BLANK_RUN = re.compile(r"\n{3,}")


def _unwanted(match):
    return "\ufffd" if "\ud800" <= match.group() <= "\udfff" else ""


def normalise(text: str) -> str:
    """\\n line ends, no NUL or other controls, no trailing spaces, at most one blank line in a row."""
    text = _LINE_BREAK.sub("\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _UNWANTED.sub(_unwanted, text)
    text = "\n".join([line.rstrip() for line in text.split("\n")])
    return _BLANK_RUN.sub("\n\n", text).strip("\n")


# --- text encodings --------------------------------------------------------------

# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Control characters that real text hardly has (tab, line breaks and ESC excepted).
_BINARYISH = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x84\x86-\x9f]")
_BINARYISH_BYTES = bytes([*range(0x00, 0x09), *range(0x0e, 0x1b), *range(0x1c, 0x20), 0x7f])
BINARY_SHARE = 0.02
_BINARY_SAMPLE = 1_000_000


def _undecodable():
    return ExtractionError(
        "undecodable", "The text in this file could not be decoded: it is not UTF-8, UTF-16 or a recognised "
        "older encoding. Save it as UTF-8 and upload it again.")


def _not_text(kind):
    name = {"html": "an HTML file", "markdown": "a Markdown file"}.get(kind, "a text file")
    return ExtractionError(
        "not_text", f"This file is named as {name} but its content looks binary, not text. "
        "Upload a plain-text file.")


def decode_text(data: bytes, kind: str = "text", declared: str | None = None) -> tuple[str, str]:
    """(text, encoding name): a byte-order mark wins, then valid UTF-8, then a declared encoding, then detection."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(name)
            except UnicodeDecodeError:
                raise _undecodable() from None
            return _checked(text, kind), ("utf-8-sig" if name == "utf-8" else name)
    if b"\x00" in data:
        found = _bomless_utf16(data)
        if found:
            return _checked(found[0], kind), found[1]
    sample = data[:_BINARY_SAMPLE]
    if _looks_binary(len(sample) - len(sample.translate(None, _BINARYISH_BYTES)), len(sample)):
        raise _not_text(kind)  # an ASCII-based encoding would have few such bytes
    # Legacy bytes almost never form valid UTF-8, so valid UTF-8 beats even a
    # declaration (pages saved as UTF-8 that still say charset=iso-8859-1 are common).
    try:
        return _checked(data.decode("utf-8"), kind), "utf-8"
    except UnicodeDecodeError:
        pass
    damaged_utf8 = _mostly_utf8(data)
    if damaged_utf8 is not None:
        return _checked(damaged_utf8, kind), "utf-8"
    if declared:
        try:
            return _checked(data.decode(declared), kind), declared
        except UnicodeDecodeError:
            pass
    text, name = _detect(data, kind)
    return _checked(text, kind), name


def _mostly_utf8(data):
    """UTF-8 with a few broken bytes (shown as U+FFFD), or None when it is not UTF-8 at all."""
    text = data.decode("utf-8", "replace")
    broken = text.count("\ufffd") - data.count("\ufffd".encode())
    valid = sum(1 for char in text[:_BINARY_SAMPLE] if char > "\x7f") - broken
    # Legacy single-byte text hardly ever holds a valid multi-byte sequence.
    return text if valid >= 20 * broken else None


def _bomless_utf16(data):
    """(text, name) when NUL bytes sit in every other position, as in UTF-16 without a byte-order mark."""
    sample = data[:4096]
    half = max(1, len(sample) // 2)
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    for name, mostly, rarely in (("utf-16-le", odd, even), ("utf-16-be", even, odd)):
        if mostly > 0.3 * half and rarely < 0.02 * half:
            try:
                return data.decode(name), name
            except UnicodeDecodeError:
                return None
    return None


COHERENCE_MARGIN = 0.05


def _detect(data, kind):
    import charset_normalizer  # only for files that are not UTF-8

    # UTF-16 and -32 were ruled out above (no mark, no NUL pattern): such a guess
    # here would turn ASCII with a few odd bytes into CJK noise.
    matches = [m for m in charset_normalizer.from_bytes(data) if not m.encoding.startswith(("utf_16", "utf_32"))]
    if not matches:
        sample = data[:_BINARY_SAMPLE]
        if sum(byte < 0x80 for byte in sample) >= 0.9 * len(sample):
            return data.decode("cp1252", "replace"), "cp1252"
        raise _undecodable()
    best = matches[0]
    # Western text decodes about equally well as cp1252, cp1250, cp1257 or cp775,
    # and the detector's pick among those wobbles with the sample. cp1252 is by
    # far the commonest (and HTML's default), so it wins a near-tie. The price:
    # a legacy Hungarian or Turkish file may get a few letters wrong.
    near_tie = [m for m in matches if m.chaos <= best.chaos and m.coherence >= best.coherence - COHERENCE_MARGIN]
    names = [best.encoding]
    if any("cp1252" in m.could_be_from_charset for m in near_tie):
        names.insert(0, "cp1252")
    names += [m.encoding for m in matches[1:]]
    for name in names:
        try:
            return data.decode(name), codecs.lookup(name).name
        except UnicodeDecodeError:
            continue
    raise _undecodable()


def _looks_binary(controls, length):
    # A few stray control characters in a short note are not binary.
    return controls > BINARY_SHARE * length + 4


def _checked(text, kind):
    sample = text[:_BINARY_SAMPLE]
    if _looks_binary(_BINARYISH.subn("", sample)[1], len(sample)):
        raise _not_text(kind)
    return text


# --- HTML ------------------------------------------------------------------------

_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_:.\-]+)""", re.IGNORECASE)
# Labels that browsers (WHATWG) read as something else.
_HTML_LABELS = {"iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
                "l1": "cp1252", "ascii": "cp1252", "us-ascii": "cp1252", "windows-1252": "cp1252",
                "x-user-defined": "cp1252"}


def declared_html_charset(data: bytes) -> str | None:
    """The encoding a <meta> tag near the start declares, as a Python codec name."""
    match = _META_CHARSET.search(data[:4096])
    if not match:
        return None
    label = match.group(1).decode("ascii").lower()
    if label.startswith("utf-16"):  # a page that can declare itself in ASCII is not UTF-16
        label = "utf-8"
    label = _HTML_LABELS.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


class _HTMLText(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template"})
    # Blocks set apart by a blank line, and blocks that only start a new line.
    PARAGRAPH = frozenset({
        "p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "pre", "blockquote", "figure",
        "hr", "address", "fieldset", "details", "dialog", "hgroup",
    })
    LINE = frozenset({
        "li", "tr", "dt", "dd", "div", "title", "caption", "figcaption", "summary", "legend", "option",
        "header", "footer", "main", "nav", "section", "article", "aside", "form", "body", "head", "html",
    })
    HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
    _SPACE = re.compile(r"\s+")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []
        self.skipping = 0
        self.in_pre = 0
        self.newlines = 2  # line breaks at the end of the output; the start counts as two
        self.first_cell = True
        self.headings = []  # the text of each h1-h6, in order: where a passage's section begins
        self.heading = None

    def _emit(self, text):
        if self.newlines and not self.in_pre:
            text = text.lstrip(" ")
        if not text:
            return
        self.parts.append(text)
        body = text.rstrip("\n")
        self.newlines = len(text) - len(body) if body else self.newlines + len(text)

    def _break(self, count):
        if self.newlines < count:
            self.parts.append("\n" * (count - self.newlines))
            self.newlines = count

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif self.skipping:
            return
        elif tag == "br":
            self.parts.append("\n")
            self.newlines += 1
        elif tag in self.PARAGRAPH or tag in self.LINE:
            self._break(2 if tag in self.PARAGRAPH else 1)
            if tag in self.HEADINGS:
                self.heading = []
            if tag == "li":
                self._emit("- ")
            elif tag == "tr":
                self.first_cell = True
            elif tag == "pre":
                self.in_pre += 1
        elif tag in ("td", "th"):
            if not self.first_cell:
                self._emit(" | ")
            self.first_cell = False

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif self.skipping:
            return
        elif tag in self.PARAGRAPH or tag in self.LINE:
            if tag in self.HEADINGS and self.heading is not None:
                text = " ".join("".join(self.heading).split())
                if text:
                    self.headings.append(text)
                self.heading = None
            self._break(2 if tag in self.PARAGRAPH else 1)
            if tag == "pre":
                self.in_pre = max(0, self.in_pre - 1)

    def handle_data(self, data):
        if self.skipping:
            return
        if not self.in_pre:
            data = self._SPACE.sub(" ", data)
        if self.heading is not None:
            self.heading.append(data)
        self._emit(data)

    def text(self):
        return "".join(self.parts)


def html_to_text(markup: str, headings: list | None = None) -> str:
    """Visible text of an HTML document: no scripts, styles or comments; blocks on their own lines.

    The text of each heading is added to `headings`, when given.
    """
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    if headings is not None:
        headings.extend(parser.headings)
    return parser.text()


# --- PDF -------------------------------------------------------------------------


def pdf_text(data: bytes, max_chars: int, max_pages: int, page_starts: list | None = None) -> tuple[str, int]:
    """(normalised text, page count) read with PDFium; [offset, page number] of each page with text
    is added to `page_starts`, when given."""
    import pypdfium2 as pdfium

    damaged = ExtractionError(
        "damaged", "This PDF is damaged or incomplete and can't be read. If it was downloaded, download it "
        "again; otherwise save or export it to PDF again and upload the new file.")
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        # PDFium's FPDF_ERR_PASSWORD (4) and FPDF_ERR_SECURITY (5).
        if getattr(exc, "err_code", None) in (4, 5):
            raise ExtractionError(
                "encrypted", "This PDF is protected by a password, so its text can't be read. Remove the "
                "password (for example by saving an unprotected copy) and upload it again.") from None
        raise damaged from None
    try:
        pages = len(document)
        if pages > max_pages:
            raise ExtractionError(
                "too_many_pages", f"This PDF has {pages:,} pages; at most {max_pages:,} can be read. "
                "Split it into smaller files.")
        texts = []
        total = 0
        for index in range(pages):
            try:
                page = document[index]
                textpage = page.get_textpage()
            except pdfium.PdfiumError:
                raise damaged from None
            text = normalise(textpage.get_text_bounded())
            textpage.close()
            page.close()
            if text:
                if page_starts is not None:
                    page_starts.append([total, index + 1])
                total += len(text) + 2
                if total - 2 > max_chars:  # stop reading early: it is refused anyway
                    raise too_long(max_chars)
                texts.append(text)
    finally:
        document.close()
    return "\n\n".join(texts), pages  # each page is normalised and stripped already


# --- DOCX ------------------------------------------------------------------------

_W = ("http://schemas.openxmlformats.org/wordprocessingml/2006/main",
      "http://purl.oclc.org/ooxml/wordprocessingml/main")  # transitional and strict OOXML
_FALLBACK = "http://schemas.openxmlformats.org/markup-compatibility/2006 Fallback"
# What each WordprocessingML element means for the text; expat names them "namespace local".
_ROLES = {f"{ns} {local}": role for ns in _W for local, role in (
    ("p", "p"), ("r", "r"), ("t", "t"), ("tab", "\t"), ("ptab", "\t"), ("br", "\n"), ("cr", "\n"),
    ("noBreakHyphen", "-"), ("tbl", "tbl"), ("tr", "tr"), ("tc", "tc"), ("pStyle", "style"),
)}
# Paragraph styles Word gives headings ("Heading1".."Heading9", "Title"), by their style id.
_HEADING_STYLE = re.compile(r"(?i)^(heading\s*\d|title)$")
_ROLES[_FALLBACK] = "fallback"


class _DocxText:
    """Streams word/document.xml: paragraphs in order, each table row as 'cell | cell'."""

    def __init__(self, max_chars):
        self.max_chars = max_chars
        self.blocks = []
        self.size = 0
        self.paragraphs = []  # one buffer per open w:p (a text box nests paragraphs)
        self.tables = []
        self.in_text = False
        self.runs = 0  # open w:r: a w:tab outside a run is a tab stop's definition, not a tab
        self.skipping = 0  # inside mc:Fallback, which repeats its mc:Choice
        self.headings = []  # the text of each heading paragraph, in order
        self.heading_levels = []  # for each open w:p: is it a heading

    def start(self, name, attrs):
        role = _ROLES.get(name)
        if role is None:
            return
        if role == "fallback":
            self.skipping += 1
        elif self.skipping:
            return
        elif role == "p":
            self.paragraphs.append([])
            self.heading_levels.append(False)
        elif role == "style":
            value = next((v for k, v in attrs.items() if k.endswith(" val")), "")
            if self.heading_levels and _HEADING_STYLE.match(value):
                self.heading_levels[-1] = True
        elif role == "r":
            self.runs += 1
        elif role == "t":
            self.in_text = True
        elif role == "tbl":
            self.tables.append([])
        elif role == "tr":
            if self.tables:
                self.tables[-1].append([])
        elif role == "tc":
            if self.tables and self.tables[-1]:
                self.tables[-1][-1].append([])
        elif self.runs and self.paragraphs:
            self.paragraphs[-1].append(role)

    def end(self, name):
        role = _ROLES.get(name)
        if role is None:
            return
        if role == "fallback":
            self.skipping -= 1
        elif self.skipping:
            return
        elif role == "t":
            self.in_text = False
        elif role == "r":
            self.runs = max(0, self.runs - 1)
        elif role == "p" and self.paragraphs:
            text = "".join(self.paragraphs.pop())
            if self.heading_levels.pop() and text.strip() and not self.tables:
                self.headings.append(" ".join(text.split()))
            self._block(text)
        elif role == "tbl" and self.tables:
            for row in self.tables.pop():
                cells = (" ".join(p for p in cell if p.strip()) for cell in row)
                self._block(" | ".join(cells))

    def chars(self, data):
        if self.in_text and not self.skipping and self.paragraphs:
            self.paragraphs[-1].append(data)

    def _block(self, text):
        # Inside a table cell, a paragraph (or a nested table's row) belongs to that cell.
        if self.tables and self.tables[-1] and self.tables[-1][-1]:
            self.tables[-1][-1][-1].append(text)
        else:
            self.blocks.append(text)
        self.size += len(text) + 1
        if self.size > self.max_chars * 2:  # clearly over even after normalising
            raise too_long(self.max_chars)


def _refuse_dtd(*_args):
    # WordprocessingML never has a DTD; one here could only be an entity-expansion attack.
    raise ExtractionError("damaged", "This Word file contains markup that Word never writes, so it was not "
                                     "opened. Save it again from Word and upload the new file.")


def docx_text(data: bytes, max_chars: int, headings: list | None = None) -> str:
    """Normalised text of a .docx's body, read with expat (no DTDs, no entities); the text of each
    heading paragraph is added to `headings`, when given."""
    damaged = ExtractionError(
        "damaged", "This Word file is damaged or incomplete and can't be opened. Save it again from Word and retry.")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive, archive.open("word/document.xml") as member:
            # zipfile stops at the declared size, and the parent screened that; bound it anyway.
            xml = member.read(DOCX_MAX_UNCOMPRESSED + 1)
    except (zipfile.BadZipFile, KeyError, zlib.error, OSError, EOFError, ValueError):
        raise damaged from None
    if len(xml) > DOCX_MAX_UNCOMPRESSED:
        raise damaged
    collector = _DocxText(max_chars)
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.StartElementHandler = collector.start
    parser.EndElementHandler = collector.end
    parser.CharacterDataHandler = collector.chars
    try:
        parser.Parse(xml, True)
    except expat.ExpatError:
        raise damaged from None
    if headings is not None:
        headings.extend(collector.headings)
    return normalise("\n".join(collector.blocks))


# --- entry points ----------------------------------------------------------------


def parse(kind: str, data: bytes, max_chars: int, max_pages: int) -> dict:
    """{"text", "encoding", "pages", "outline"} for data of the given kind, or ExtractionError.

    The outline says where passages begin a new part: {"pages": [[offset, page], ...]} for a PDF,
    {"headings": [text, ...]} for HTML and Word (Markdown's headings are in its text).
    """
    encoding = pages = None
    headings, page_starts = [], []
    if kind in ("text", "markdown"):
        raw, encoding = decode_text(data, kind)
        text = normalise(raw)
    elif kind == "html":
        raw, encoding = decode_text(data, kind, declared_html_charset(data))
        text = normalise(html_to_text(raw, headings))
    elif kind == "pdf":
        text, pages = pdf_text(data, max_chars, max_pages, page_starts)
    elif kind == "docx":
        text = docx_text(data, max_chars, headings)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if len(text) > max_chars:
        raise too_long(max_chars)
    if not text.strip():
        raise no_text(kind)
    outline = {"pages": page_starts} if page_starts else ({"headings": headings} if headings else {})
    return {"text": text, "encoding": encoding, "pages": pages, "outline": outline}


def limit_resources(memory_bytes: int, cpu_seconds: int) -> None:
    def lower(limit, soft, hard=None):
        _current, ceiling = resource.getrlimit(limit)
        hard = soft if hard is None else hard
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(limit, (soft, hard))

    lower(resource.RLIMIT_AS, memory_bytes)
    lower(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)  # SIGXCPU first, SIGKILL a second later
    lower(resource.RLIMIT_CORE, 0)  # a crash must not dump the upload to disk
    lower(resource.RLIMIT_FSIZE, 0)  # nor may the parser write any file
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead of killing


def main(argv=None) -> None:
    kind, memory_bytes, cpu_seconds, max_chars, max_pages = (argv or sys.argv[1:])[:5]
    limit_resources(int(memory_bytes), int(cpu_seconds))
    reply_to = sys.stdout.buffer
    sys.stdout = sys.stderr  # a library that prints must not corrupt the reply
    try:
        data = sys.stdin.buffer.read()
        try:
            reply = {"ok": True, **parse(kind, data, int(max_chars), int(max_pages))}
        except ExtractionError as exc:
            reply = {"ok": False, "code": exc.code, "message": exc.message}
        reply_to.write(json.dumps(reply, ensure_ascii=False).encode("utf-8"))
        reply_to.flush()
    except MemoryError:
        os._exit(EXIT_MEMORY)  # anything more could need memory too


if __name__ == "__main__":
    main()
