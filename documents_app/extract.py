"""Plain text out of an uploaded file: the one seam between uploads and parsers.

The cheap checks run here, in the caller's process: size, extension, magic
bytes, and the ZIP directory of a .docx. The parsing itself runs in a fresh
child interpreter (documents_app.extract_worker) under an address-space and a
CPU limit and a wall-clock timeout, so the worst a hostile file can do is cost
one killed process. The upload goes in on the child's stdin and the text comes
back as JSON on its stdout: nothing is written to disk.

No Django here: the view wraps this module, the worker imports it bare.
"""

import json
import logging
import math
import os
import signal
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 20 * 1024 * 1024  # the view checks this before reading the body; extract re-checks
MAX_CHARS = 2_000_000  # more extracted text than this is refused
MAX_PDF_PAGES = 2000
EXTRACT_TIMEOUT_S = 20  # wall time for one extraction
EXTRACT_MEMORY_BYTES = 1024 * 1024 * 1024  # address-space limit of the extraction process

# A .docx is screened against these before anything decompresses it.
DOCX_MAX_ENTRIES = 1000
DOCX_MAX_UNCOMPRESSED = 50 * 1024 * 1024
DOCX_MAX_RATIO = 100
# Ratios are only judged on members this large: a tiny, very repetitive part
# (an empty styles list) compresses far past 100:1 and harms nobody.
DOCX_RATIO_FLOOR = 1024 * 1024
# A central directory larger than this is refused before zipfile parses it.
DOCX_MAX_DIRECTORY = 1024 * 1024

EXTENSIONS = {
    ".txt": "text", ".text": "text",
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
TEXT_KINDS = ("text", "markdown", "html")

# The worker's exit status for a Python MemoryError (it exits at once, as
# anything else it tried could need memory too).
EXIT_MEMORY = 3

ROOT = Path(__file__).resolve().parent.parent

SUPPORTED = "Upload a text (.txt), Markdown (.md), HTML (.html), PDF (.pdf) or Word (.docx) file."


class ExtractionError(Exception):
    """.message is a clear sentence for the person who uploaded the file; .code a short slug."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Extracted:
    text: str  # normalised: \n line ends, no NUL, trailing whitespace trimmed, blank-line runs collapsed
    kind: str  # "text" | "markdown" | "html" | "pdf" | "docx"
    encoding: str | None  # detected text encoding for text/markdown/html, else None
    pages: int | None  # PDF pages, else None
    # Where a new part begins, for passages: {"pages": [[offset, page]...]} or {"headings": [...]}.
    outline: dict | None = None


def extract_text(data: bytes, filename: str) -> Extracted:
    """The normalised text of an uploaded file, or ExtractionError saying why not."""
    if len(data) > MAX_FILE_BYTES:
        raise ExtractionError(
            "too_large", f"The file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB. Upload a smaller file.")
    extension = file_extension(filename)
    kind = kind_for_extension(extension)
    if not data:
        raise ExtractionError("empty", "The file is empty. Upload a file that contains some text.")
    if kind == "docx" and data.startswith(_ZIP_MAGIC):
        screen_docx(data)  # bound the archive before anything reads further into it
    check_content_matches(kind, extension, data)  # for a .docx, this also requires word/document.xml
    result = run_worker(kind, data)
    text = result["text"]
    if len(text) > MAX_CHARS:
        raise too_long()
    if not text.strip():
        raise no_text(kind)
    outline = result.get("outline") if isinstance(result.get("outline"), dict) else {}
    return Extracted(text=text, kind=kind, encoding=result.get("encoding"), pages=result.get("pages"),
                     outline=outline)


# --- file name -------------------------------------------------------------------


def file_extension(filename: str) -> str:
    """'.pdf' for 'C:\\fakepath\\Report.PDF'; '' when the name has no extension."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if "." not in name:
        return ""
    return "." + name.rsplit(".", 1)[1].lower()


def kind_for_extension(extension: str) -> str:
    if extension in EXTENSIONS:
        return EXTENSIONS[extension]
    if not extension:
        raise ExtractionError("unsupported_type", f"This file has no extension, so its type is unknown. {SUPPORTED}")
    if extension == ".doc":
        raise ExtractionError(
            "unsupported_type",
            "Older Word .doc files can't be read. Open it in Word or LibreOffice, save it as .docx and upload that.")
    shown = extension if len(extension) <= 12 else extension[:12] + "…"
    raise ExtractionError("unsupported_type", f"Files of type {shown} can't be read. {SUPPORTED}")


# --- content sniffing ------------------------------------------------------------

_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"WEBP", 8, "webp"),
    (b"\x7fELF", 0, "elf"),
    (b"\x1f\x8b", 0, "gzip"),
    (b"7z\xbc\xaf\x27\x1c", 0, "7z"),
    (b"Rar!\x1a\x07", 0, "rar"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 0, "ole"),
    (b"SQLite format 3\x00", 0, "sqlite"),
    (b"ID3", 0, "audio"),
    (b"OggS", 0, "audio"),
    (b"fLaC", 0, "audio"),
    (b"ftyp", 4, "video"),
    (b"\x1a\x45\xdf\xa3", 0, "video"),
    (b"{\\rtf", 0, "rtf"),
]

DESCRIPTIONS = {
    "pdf": "a PDF",
    "docx": "a Word document (.docx)",
    "xlsx": "an Excel workbook",
    "pptx": "a PowerPoint presentation",
    "odf": "an OpenDocument file",
    "zip": "a ZIP archive",
    "ole": "an older Microsoft Office file (such as a .doc) or a password-protected Office document",
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "gif": "a GIF image",
    "webp": "a WebP image",
    "elf": "a program (an ELF executable)",
    "gzip": "a gzip archive",
    "7z": "a 7-Zip archive",
    "rar": "a RAR archive",
    "sqlite": "an SQLite database",
    "audio": "an audio file",
    "video": "a video file",
    "rtf": "an RTF document",
}


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def sniff(data: bytes) -> str | None:
    """A label from DESCRIPTIONS for what the bytes are, or None for "maybe text"."""
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(_ZIP_MAGIC):
        return _sniff_zip(data)
    for prefix, offset, label in _MAGIC:
        if data.startswith(prefix, offset):
            return label
    return None


def _sniff_zip(data):
    try:
        with open_zip(data) as archive:
            names = set(archive.namelist())
    except Exception:  # any hostile directory is just "a ZIP archive" for the message
        return "zip"
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names:
        return "xlsx"
    if "ppt/presentation.xml" in names:
        return "pptx"
    if "mimetype" in names and "content.xml" in names:
        return "odf"
    return "zip"


def check_content_matches(kind: str, extension: str, data: bytes) -> None:
    """Refuse a file whose bytes are not what its name says."""
    found = sniff(data)
    if kind in TEXT_KINDS:
        if found in ("pdf", "docx"):
            target = ".pdf" if found == "pdf" else ".docx"
            raise ExtractionError(
                "wrong_type",
                f"This file is named {extension} but its content is {DESCRIPTIONS[found]}. "
                f"Rename it to {target} and upload it again.")
        if found is not None and found != "rtf":  # RTF is text, if ugly: let it through
            raise ExtractionError(
                "not_text",
                f"This file is named {extension} but its content is {DESCRIPTIONS[found]}, not text. "
                "Upload a plain-text file.")
    elif kind == "pdf" and b"%PDF-" not in data[:1024]:  # readers allow junk before the header
        if found == "docx":
            raise ExtractionError(
                "wrong_type",
                "This file is named .pdf but its content is a Word document (.docx). "
                "Rename it to .docx or upload the original PDF.")
        what = DESCRIPTIONS[found] if found else "not a PDF (it does not start with %PDF-)"
        raise ExtractionError(
            "wrong_type", f"This file is named .pdf but its content is {what}. Upload the original PDF.")
    elif kind == "docx" and found != "docx":
        if found == "pdf":
            raise ExtractionError(
                "wrong_type",
                "This file is named .docx but its content is a PDF. "
                "Rename it to .pdf or upload the original Word file.")
        if found == "ole":
            raise ExtractionError(
                "wrong_type",
                "This file is named .docx but it is either an older Word .doc file or a password-protected "
                "document. Save it in Word as an unprotected .docx and upload that.")
        what = DESCRIPTIONS[found] if found else "not a Word document"
        raise ExtractionError(
            "wrong_type", f"This file is named .docx but its content is {what}. Upload the original Word file.")


# --- DOCX screening --------------------------------------------------------------


def _zip_directory_size(data):
    """The central directory's declared size, from the end-of-directory record."""
    # The record is 22 bytes plus a comment of at most 65535 bytes, at the very end.
    tail_start = max(0, len(data) - 22 - 65535)
    at = data.rfind(b"PK\x05\x06", tail_start)
    if at < 0 or at + 22 > len(data):
        raise zipfile.BadZipFile("no end of central directory")
    entries, directory_size = struct.unpack_from("<HI", data, at + 10)
    return entries, directory_size


def open_zip(data: bytes) -> zipfile.ZipFile:
    """zipfile.ZipFile over data, after bounding the directory zipfile would read into memory."""
    entries, directory_size = _zip_directory_size(data)
    # zipfile builds one object per directory entry: bound them before it does.
    if entries > DOCX_MAX_ENTRIES or directory_size > DOCX_MAX_DIRECTORY:
        raise ExtractionError("zip_bomb", _zip_bomb_message("holds far too many parts"))
    return zipfile.ZipFile(BytesIO(data))


def _zip_bomb_message(why):
    return (f"This Word file {why} for a real document (it looks like a ZIP bomb), so it was not opened. "
            "Save it again from Word and upload the new file.")


def screen_docx(data: bytes) -> None:
    """Refuse a .docx whose ZIP directory could not belong to a real document."""
    damaged = ExtractionError(
        "damaged", "This Word file is damaged or incomplete and can't be opened. Save it again from Word and retry.")
    try:
        with open_zip(data) as archive:
            infos = archive.infolist()
    except ExtractionError:
        raise
    except Exception:  # zipfile has many ways to say a directory is broken
        raise damaged from None
    if len(infos) > DOCX_MAX_ENTRIES:
        raise ExtractionError("zip_bomb", _zip_bomb_message("holds far too many parts"))
    if any(info.flag_bits & 0x1 for info in infos):
        raise ExtractionError(
            "encrypted", "This Word file is password-protected. Remove the password in Word and upload it again.")
    if any(info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) for info in infos):
        raise damaged
    total = sum(info.file_size for info in infos)
    total_compressed = sum(info.compress_size for info in infos)
    if total > DOCX_MAX_UNCOMPRESSED:
        raise ExtractionError("zip_bomb", _zip_bomb_message(
            f"unpacks to more than {DOCX_MAX_UNCOMPRESSED // (1024 * 1024)} MB"))
    for info in infos:
        if info.file_size >= DOCX_RATIO_FLOOR and info.file_size > DOCX_MAX_RATIO * max(info.compress_size, 1):
            raise ExtractionError("zip_bomb", _zip_bomb_message("is compressed far more tightly than is normal"))
    if total >= DOCX_RATIO_FLOOR and total > DOCX_MAX_RATIO * max(total_compressed, 1):
        raise ExtractionError("zip_bomb", _zip_bomb_message("is compressed far more tightly than is normal"))


# --- the child process -----------------------------------------------------------


def worker_command(kind: str) -> list[str]:
    """argv of the extraction child; the limits travel as arguments so a test can tighten them."""
    cpu_seconds = math.ceil(EXTRACT_TIMEOUT_S) + 1
    # -E: no PYTHON* variables; -s: no user site; -B: no .pyc writes (the child may not write files).
    return [sys.executable, "-E", "-s", "-B", "-m", "documents_app.extract_worker", kind,
            str(EXTRACT_MEMORY_BYTES), str(cpu_seconds), str(MAX_CHARS), str(MAX_PDF_PAGES)]


def run_worker(kind: str, data: bytes) -> dict:
    """Parse data in a limited child process; its JSON reply, or ExtractionError."""
    # The child gets no secrets: a parser exploit finds an empty environment.
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    try:
        proc = subprocess.Popen(
            worker_command(kind), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=ROOT, env=env, start_new_session=True, close_fds=True,
        )
    except OSError:  # the server's trouble, not the file's
        log.exception("could not start the extraction worker")
        raise ExtractionError(
            "busy", "The server could not read the file just now. Please try again in a minute.") from None
    try:
        stdout, stderr = proc.communicate(data, timeout=EXTRACT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise ExtractionError(
            "timeout",
            f"The file took too long to read (more than {EXTRACT_TIMEOUT_S:g} seconds). It may be damaged or "
            "unusually complex; try saving it again, or split it into smaller files.") from None
    finally:
        if proc.poll() is None:  # interrupted some other way: never leave the child running
            _kill(proc)
            proc.wait()
    if proc.returncode != 0:
        log.warning("extraction worker failed (kind=%s, status=%s): %s",
                    kind, proc.returncode, stderr[-500:].decode("utf-8", "replace"))
        raise _failure(proc.returncode, stderr)
    try:
        reply = json.loads(stdout)
        if not reply["ok"]:
            raise ExtractionError(str(reply["code"]), str(reply["message"]))
        if not isinstance(reply["text"], str):
            raise TypeError("text is not a string")
    except (ValueError, KeyError, TypeError):
        log.warning("extraction worker sent no valid reply (kind=%s): %s",
                    kind, stderr[-500:].decode("utf-8", "replace"))
        raise crashed() from None
    return reply


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group, in case the child spawned any
    except ProcessLookupError:
        pass


# Signals that mean "ran out of memory" under RLIMIT_AS: PDFium's allocator and
# C++'s bad_alloc abort (SIGABRT/SIGTRAP/SIGILL); the kernel's OOM killer sends SIGKILL.
_MEMORY_SIGNALS = {signal.SIGABRT, signal.SIGTRAP, signal.SIGILL, signal.SIGKILL}


def _failure(returncode, stderr):
    if returncode == -signal.SIGXCPU:
        return ExtractionError(
            "timeout",
            "The file took too long to read: it needed more processing time than allowed. It may be damaged or "
            "unusually complex; try saving it again, or split it into smaller files.")
    if returncode == EXIT_MEMORY or -returncode in _MEMORY_SIGNALS or b"MemoryError" in stderr:
        return ExtractionError(
            "too_much_memory",
            "The file needs too much memory to read. It may be damaged or unusually complex; "
            "try saving it again, or split it into smaller files.")
    return crashed()


def crashed():
    return ExtractionError(
        "crashed", "The file could not be read: the reader stopped unexpectedly, which usually means the file "
        "is damaged. Try saving it again and uploading the new file.")


def too_long(limit=None):
    return ExtractionError(
        "too_long", f"The file contains more than {limit or MAX_CHARS:,} characters of text, which is too much "
        "for one document. Split it into smaller files.")


def no_text(kind=None):
    if kind == "html":
        why = "The page has no visible text (text that scripts would add is not read). Save the page's text instead."
    elif kind in TEXT_KINDS:
        why = "The file holds nothing but blank space."
    else:
        why = ("If it is a scanned document or a picture of text, run it through text recognition (OCR) "
               "first and upload the result.")
    return ExtractionError("no_text", f"No text could be read from this file. {why}")
