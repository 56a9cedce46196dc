"""Document extraction throughput: PDF, DOCX and token counting, against pdftotext.

Generates a 200-page PDF and a 5,000-paragraph DOCX (with the writers in
tests/test_extract.py), then times extract_text() end to end (the limited
child process included), the same parsers in-process, Debian's pdftotext on
the same PDF, and count_tokens() over the extracted text. Medians of RUNS runs.
"""

import random
import shutil
import statistics
import subprocess
import tempfile
import time
from io import BytesIO
from pathlib import Path

from documents_app.extract import extract_text
from documents_app.extract_worker import docx_text, pdf_text
from documents_app.tokens import count_tokens
from tests.test_extract import build_docx, build_pdf

PDF_PAGES = 200
DOCX_PARAGRAPHS = 5000
RUNS = 5
PDFTOTEXT = "/usr/bin/pdftotext"

WORDS = ("the team agreed to move launch by two weeks so support staff can be trained on new pricing "
         "quarterly review budget voice model document customer renewal café naïve forecast risk "
         "owner deadline contract invoice meeting summary decision follow-up").split()


def sentence(rng, words=14):
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def make_pdf(rng):
    """PDF_PAGES pages of six paragraphs, each paragraph seven lines of ~90 characters."""
    pages = []
    for _ in range(PDF_PAGES):
        lines = []
        for _ in range(6):
            lines += [sentence(rng) for _ in range(7)] + [""]
        pages.append(lines)
    return build_pdf(pages)


def make_docx(rng):
    """DOCX_PARAGRAPHS paragraphs of ~3 sentences, with a 3x3 table after every hundred."""
    blocks = []
    for i in range(DOCX_PARAGRAPHS):
        blocks.append(" ".join(sentence(rng) for _ in range(3)))
        if i % 100 == 99:
            blocks.append([[rng.choice(WORDS) for _ in range(3)] for _ in range(3)])
    return build_docx(blocks)


def timed(function, runs=RUNS):
    """(median seconds, last result) of calling function() runs times."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def poppler_version():
    out = subprocess.run([PDFTOTEXT, "-v"], capture_output=True, text=True)
    words = (out.stderr or out.stdout).split()
    return words[2] if len(words) > 2 else "?"


def main():
    rng = random.Random(7)
    pdf, docx = make_pdf(rng), make_docx(rng)
    rows = []

    def row(what, seconds, count, unit, text):
        mb = len(text.encode()) / 1e6
        rows.append(f"| {what} | {seconds * 1000:,.0f} ms | {count / seconds:,.0f} {unit}/s | {mb / seconds:,.1f} |")

    pdf_seconds, pdf_result = timed(lambda: extract_text(pdf, "bench.pdf"))
    row("PDF: extract_text (child process, PDFium)", pdf_seconds, pdf_result.pages, "pages", pdf_result.text)
    inproc_seconds, (inproc_text, _) = timed(lambda: pdf_text(pdf, 10**9, 10**6))
    row("PDF: PDFium in-process", inproc_seconds, PDF_PAGES, "pages", inproc_text)

    try:
        import pypdf  # a test-only package: the pure-Python alternative PDFium was chosen over
    except ImportError:
        pypdf = None
    if pypdf:
        def read_with_pypdf():
            return "\n\n".join(page.extract_text() for page in pypdf.PdfReader(BytesIO(pdf)).pages)

        pypdf_seconds, pypdf_text = timed(read_with_pypdf, runs=3)
        row(f"PDF: pypdf {pypdf.__version__} in-process (not used)", pypdf_seconds, PDF_PAGES, "pages", pypdf_text)

    pdftotext_seconds = None
    if shutil.which(PDFTOTEXT):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.pdf"
            path.write_bytes(pdf)
            command = [PDFTOTEXT, "-enc", "UTF-8", str(path), "-"]
            pdftotext_seconds, out = timed(lambda: subprocess.run(command, capture_output=True, check=True).stdout)
        row(f"PDF: pdftotext {poppler_version()} (process)", pdftotext_seconds, PDF_PAGES, "pages",
            out.decode())

    docx_seconds, docx_result = timed(lambda: extract_text(docx, "bench.docx"))
    row("DOCX: extract_text (child process, expat)", docx_seconds, DOCX_PARAGRAPHS, "paragraphs",
        docx_result.text)
    docx_inproc_seconds, docx_inproc = timed(lambda: docx_text(docx, 10**9))
    row("DOCX: expat in-process", docx_inproc_seconds, DOCX_PARAGRAPHS, "paragraphs", docx_inproc)

    corpus = pdf_result.text + "\n\n" + docx_result.text
    count_tokens(corpus[:1000])  # load the vocabulary outside the timing
    token_seconds, tokens = timed(lambda: count_tokens(corpus), runs=3)
    row("tokens: count_tokens (o200k_base)", token_seconds, tokens, "tokens", corpus)

    print(f"document extraction: a {PDF_PAGES}-page PDF ({len(pdf) / 1e3:,.0f} KB, "
          f"{len(pdf_result.text):,} characters of text) and a {DOCX_PARAGRAPHS:,}-paragraph DOCX "
          f"({len(docx) / 1e3:,.0f} KB, {len(docx_result.text):,} characters); median of {RUNS} runs")
    print("| what | median | rate | text MB/s |")
    print("| --- | ---: | ---: | ---: |")
    for line in rows:
        print(line)
    if pdftotext_seconds:
        print(f"PDF time, ours / pdftotext: {pdf_seconds / pdftotext_seconds:.2f}x with the child process, "
              f"{inproc_seconds / pdftotext_seconds:.2f}x in-process; {tokens:,} tokens counted")
    else:
        print(f"pdftotext not found at {PDFTOTEXT}: no comparison")


if __name__ == "__main__":
    main()
