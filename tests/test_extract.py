"""documents_app.extract: formats, encodings and hostile files.

Every file is made here: PDFs by a small writer below (standard Type1 font,
no package), DOCX files as hand-written OOXML zips, an encrypted PDF by pypdf
from a generated one. bench/extract.py reuses the writers.
"""

import io
import json
import os
import subprocess
import sys
import time
import zipfile
import zlib
from xml.sax.saxutils import escape

import pytest

from documents_app import extract
from documents_app.extract import ExtractionError, extract_text
from documents_app.extract_worker import normalise

# --- a tiny PDF writer -----------------------------------------------------------


def _pdf_literal(text):
    raw = text.encode("cp1252")  # the font's WinAnsiEncoding
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def page_stream(lines):
    """A content stream that writes lines top-down in 11 pt Helvetica."""
    ops = [b"BT /F1 11 Tf 14 TL 56 790 Td"]
    ops += [_pdf_literal(line) + b" Tj T*" for line in lines]
    ops.append(b"ET")
    return b"\n".join(ops)


def pdf_from_streams(streams):
    """A valid PDF, one page per (content bytes, is_flate_encoded) pair."""
    objects = [None, None, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    kids = []
    for content, flate in streams:
        flate_entry = b" /Filter /FlateDecode" if flate else b""
        objects.append(b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(content), flate_entry, content))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 3 0 R >> >> >>" % len(objects))
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)


def build_pdf(pages, compress=True):
    """A PDF whose page i shows the lines pages[i]."""
    return pdf_from_streams([(zlib.compress(page_stream(lines)) if compress else page_stream(lines), compress)
                             for lines in pages])


def deflate_bomb(chunk, repeats):
    """zlib data inflating to chunk * repeats, built in microseconds from one repeated block."""
    compressor = zlib.compressobj(9)
    # After a full flush the compressor starts afresh, so every later block is byte-identical.
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + block * (repeats - 1) + compressor.flush()


# --- a tiny DOCX writer ----------------------------------------------------------

W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.'
    'wordprocessingml.document.main+xml"/></Types>')
_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
    'officeDocument" Target="word/document.xml"/></Relationships>')


def docx_paragraph(text):
    """A paragraph in two runs (the second bold), as Word splits text at formatting changes."""
    half = len(text) // 2
    return (f'<w:p><w:pPr><w:pStyle w:val="Normal"/></w:pPr><w:r><w:t xml:space="preserve">{escape(text[:half])}'
            f'</w:t></w:r><w:r><w:rPr><w:b/></w:rPr><w:t xml:space="preserve">{escape(text[half:])}</w:t></w:r></w:p>')


def docx_table(rows):
    return "<w:tbl>" + "".join(
        "<w:tr>" + "".join(f"<w:tc>{docx_paragraph(cell)}</w:tc>" for cell in row) + "</w:tr>" for row in rows
    ) + "</w:tbl>"


def docx_from_body(body_xml, prolog="", extra_parts=()):
    document = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>{prolog}'
                f'<w:document xmlns:w="{W_NS}" '
                'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006">'
                f"<w:body>{body_xml}<w:sectPr/></w:body></w:document>")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _RELS)
        archive.writestr("word/document.xml", document)
        for name, content in extra_parts:
            archive.writestr(name, content)
    return buffer.getvalue()


def build_docx(blocks):
    """A .docx whose body is blocks: a str is a paragraph, a list of rows a table."""
    return docx_from_body("".join(docx_paragraph(b) if isinstance(b, str) else docx_table(b) for b in blocks))


# --- helpers ---------------------------------------------------------------------


def refused(data, filename, code):
    """The ExtractionError for data, checked to carry code and a sentence a person can read."""
    with pytest.raises(ExtractionError) as caught:
        extract_text(data, filename)
    error = caught.value
    assert error.code == code, (error.code, error.message)
    message = error.message
    assert message[0].isupper() and message.endswith("."), message
    assert len(message.split()) >= 6, message
    assert "Traceback" not in message and "Error" not in message, message
    return message


LOREM = ("Voice notes for the quarterly review. The team agreed to move the launch by two weeks "
         "so the support staff can be trained on the new pricing.")


# --- formats ---------------------------------------------------------------------


def test_plain_text_is_normalised():
    result = extract_text(b"first line  \r\nsecond\tline\r\n\r\n\r\n\r\nthird\x00 line\n\n", "notes.txt")
    assert result.text == "first line\nsecond\tline\n\nthird line"
    assert (result.kind, result.encoding, result.pages) == ("text", "utf-8", None)


def test_dot_text_extension_and_windows_path():
    result = extract_text(b"hello", "C:\\fakepath\\Notes.TEXT")
    assert (result.kind, result.text) == ("text", "hello")


def test_text_mentioning_a_pdf_header_is_still_text():
    note = b"PDF files start with the bytes %PDF-1.7 and end with %%EOF."
    assert extract_text(note, "pdf-notes.md").text == note.decode()


def test_pdf_header_after_leading_junk():
    assert extract_text(b"\r\n" + build_pdf([["after junk"]]), "junk.pdf").text == "after junk"


def test_markdown_keeps_its_markup():
    source = "# Plan\n\n- ship **v2**\n- [docs](https://example.test)\n"
    result = extract_text(source.encode(), "plan.md")
    assert result.kind == "markdown"
    assert result.text == source.strip()
    assert extract_text(b"# T", "x.markdown").kind == "markdown"


def test_html_keeps_visible_text_in_order():
    page = b"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Quarterly plan</title>
    <style>body { color: red; font-family: SecretFont }</style>
    <script>var token = "do-not-show"; function track() { return 42; }</script></head>
    <body><!-- an internal comment -->
    <h1>Launch &amp; pricing</h1>
    <p>The launch   moves
       to <b>May</b>.<br>Support gets trained first.</p>
    <noscript>Enable JavaScript please</noscript><template><p>template text</p></template>
    <ul><li>one</li><li>two &lt;three&gt;</li></ul>
    <table><tr><th>Plan</th><th>Price</th></tr><tr><td>Basic</td><td>&euro;5</td></tr></table>
    <pre>  indented
    code</pre>
    <p>caf&eacute; &#8212; done</p></body></html>"""
    result = extract_text(page, "plan.html")
    assert result.kind == "html" and result.encoding == "utf-8"
    assert result.text == (
        "Quarterly plan\n\nLaunch & pricing\n\nThe launch moves to May.\nSupport gets trained first.\n\n"
        "- one\n- two <three>\n\nPlan | Price\nBasic | €5\n\n  indented\n    code\n\ncafé — done")
    for hidden in ("do-not-show", "track", "SecretFont", "color", "internal comment", "JavaScript", "template"):
        assert hidden not in result.text


def test_html_script_heavy_page_keeps_no_code():
    scripts = "".join(f"<script>window.x{i} = function() {{ return 'code{i}'; }};</script>" for i in range(300))
    page = f"<html><body>{scripts}<p>Only this sentence.</p>{scripts}</body></html>".encode()
    result = extract_text(page, "app.htm")
    assert result.text == "Only this sentence."


def test_html_with_only_script_has_no_text():
    page = b"<html><head><script>" + b"document.write('hi');" * 2000 + b"</script></head><body></body></html>"
    message = refused(page, "app.html", "no_text")
    assert "visible text" in message


def test_html_meta_charset_is_honoured():
    page = "<html><head><meta http-equiv='Content-Type' content='text/html; charset=windows-1251'></head>" \
           "<body><p>Привет, мир</p></body></html>"
    result = extract_text(page.encode("cp1251"), "ru.html")
    assert result.text == "Привет, мир"
    assert result.encoding == "cp1251"


def test_html_saved_as_utf8_despite_its_declaration():
    page = '<meta charset="iso-8859-1"><p>café</p>'.encode("utf-8")
    assert extract_text(page, "mislabelled.html").text == "café"


def test_pdf_text_in_page_order():
    pages = [["Page one opens the report.", "It has a second line (with parentheses)."],
             ["Page two: café — naïve façade."],
             ["Page three closes it."]]
    result = extract_text(build_pdf(pages), "report.pdf")
    assert (result.kind, result.encoding, result.pages) == ("pdf", None, 3)
    assert result.text == (
        "Page one opens the report.\nIt has a second line (with parentheses).\n\n"
        "Page two: café — naïve façade.\n\nPage three closes it.")


def test_pdf_with_only_an_owner_password_is_read():
    import pypdf  # test-only

    writer = pypdf.PdfWriter(clone_from=io.BytesIO(build_pdf([["Readable without a password."]])))
    writer.encrypt(user_password="", owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    assert extract_text(out.getvalue(), "perm.pdf").text == "Readable without a password."


def test_docx_paragraphs_and_tables_in_order():
    data = build_docx([
        "Minutes of the meeting",
        [["Owner", "Task"], ["Ana", "Pricing & plans"], ["Bo", "Support <training>"]],
        "Next meeting on Friday.",
    ])
    result = extract_text(data, "minutes.docx")
    assert (result.kind, result.encoding, result.pages) == ("docx", None, None)
    assert result.text == ("Minutes of the meeting\nOwner | Task\nAna | Pricing & plans\n"
                           "Bo | Support <training>\nNext meeting on Friday.")


def test_docx_details_tabs_breaks_textboxes_and_deletions():
    body = (
        '<w:p><w:r><w:t>A</w:t><w:tab/><w:t>B</w:t><w:br/><w:t>C</w:t></w:r></w:p>'
        # Tracked deletion: w:delText is not text of the document any more.
        '<w:p><w:r><w:t xml:space="preserve">kept </w:t></w:r><w:del><w:r><w:delText>gone</w:delText></w:r></w:del>'
        '<w:ins><w:r><w:t>inserted</w:t></w:r></w:ins></w:p>'
        # A text box appears twice (Choice and its Fallback); it must be read once.
        '<w:p><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><w:txbxContent>'
        '<w:p><w:r><w:t>boxed</w:t></w:r></w:p></w:txbxContent></w:drawing></mc:Choice>'
        '<mc:Fallback><w:pict><w:txbxContent><w:p><w:r><w:t>boxed</w:t></w:r></w:p></w:txbxContent></w:pict>'
        '</mc:Fallback></mc:AlternateContent></w:r><w:r><w:t>after box</w:t></w:r></w:p>'
        '<w:sdt><w:sdtContent><w:p><w:r><w:t>in a content control</w:t></w:r></w:p></w:sdtContent></w:sdt>'
        '<w:p><w:r><w:instrText>PAGE \\* MERGEFORMAT</w:instrText></w:r><w:r><w:t>7</w:t></w:r></w:p>'
        # Tab stops are defined with w:tab too, outside any run: no tab character.
        '<w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr><w:r><w:t>tab stops</w:t></w:r></w:p>'
    )
    result = extract_text(docx_from_body(body), "details.docx")
    assert result.text == "A\tB\nC\nkept inserted\nboxed\nafter box\nin a content control\n7\ntab stops"


def test_normalise():
    text = "\ufeffa \r\nb\rc\x00d\x07\x0ce\u2028f\n\n\n\n\ng\u00a0 \t\n\n"
    assert normalise(text) == "a\nb\ncd\ne\nf\n\ng"
    assert normalise("x\ud800y") == "x\ufffdy"


# --- encodings -------------------------------------------------------------------

WESTERN = "The café on the corner has a naïve façade — “quite charming”, they said. It costs 5 € a cup."


LONG_WESTERN = "\n".join([WESTERN] * 3000)  # the detector samples long files: its pick must not wobble


@pytest.mark.parametrize("text, encoded, encoding", [
    (WESTERN, WESTERN.encode("utf-8"), "utf-8"),
    (WESTERN, b"\xef\xbb\xbf" + WESTERN.encode("utf-8"), "utf-8-sig"),
    (WESTERN, b"\xff\xfe" + WESTERN.encode("utf-16-le"), "utf-16-le"),
    (WESTERN, b"\xfe\xff" + WESTERN.encode("utf-16-be"), "utf-16-be"),
    (WESTERN, WESTERN.encode("cp1252"), "cp1252"),
    (LONG_WESTERN, LONG_WESTERN.encode("cp1252"), "cp1252"),
], ids=["utf-8", "utf-8-bom", "utf-16-le-bom", "utf-16-be-bom", "cp1252", "cp1252-long"])
def test_western_encodings(text, encoded, encoding):
    result = extract_text(encoded, "cafe.txt")
    assert result.text == text
    assert result.encoding == encoding


def test_utf16_without_bom():
    result = extract_text("Plain notes, saved as UTF-16 with no mark.\n".encode("utf-16-le"), "u.txt")
    assert (result.text, result.encoding) == ("Plain notes, saved as UTF-16 with no mark.", "utf-16-le")


def test_utf8_with_a_broken_byte_stays_utf8():
    data = ("Größe, café, naïve, façade — " * 10).encode() + b"\xff" + "déjà vu".encode()
    result = extract_text(data, "damaged.txt")
    assert result.encoding == "utf-8"
    assert result.text.endswith("façade — \ufffddéjà vu")


def test_short_cp1252_and_latin1():
    assert extract_text("café — naïve façade".encode("cp1252"), "a.txt").text == "café — naïve façade"
    result = extract_text("Größe und Übermaß, schön.".encode("latin-1"), "b.txt")
    assert result.text == "Größe und Übermaß, schön."
    assert result.encoding == "cp1252"


@pytest.mark.parametrize("text, codec, names", [
    ("日本語のテキストです。これはテストの文章で、エンコーディングを検出します。", "shift_jis", {"shift_jis", "cp932"}),
    ("这是一个中文文本，用于测试编码检测是否正确。我们希望它能够被识别。", "gb18030", {"gb18030"}),
    ("Привет! Это текст в кодировке windows-1251 для проверки определения.", "cp1251", {"cp1251"}),
], ids=["shift_jis", "gb18030", "cp1251"])
def test_other_encodings(text, codec, names):
    result = extract_text(text.encode(codec), "notes.md")
    assert result.text == text
    assert result.encoding in names


# --- hostile and refused files ---------------------------------------------------


def test_oversized_file():
    message = refused(bytes(extract.MAX_FILE_BYTES + 1), "big.txt", "too_large")
    assert "20 MB" in message


def test_empty_file():
    refused(b"", "empty.txt", "empty")


@pytest.mark.parametrize("filename, fragment", [
    ("photo.png", "Files of type .png"),
    ("README", "no extension"),
    ("old.doc", "save it as .docx"),
])
def test_unknown_extension(filename, fragment):
    assert fragment in refused(b"hello", filename, "unsupported_type")


def test_pdf_named_docx():
    message = refused(build_pdf([["x"]]), "report.docx", "wrong_type")
    assert message == ("This file is named .docx but its content is a PDF. "
                       "Rename it to .pdf or upload the original Word file.")


def test_docx_named_pdf():
    message = refused(build_docx(["hello"]), "report.pdf", "wrong_type")
    assert "content is a Word document (.docx)" in message and "Rename it to .docx" in message


@pytest.mark.parametrize("data, filename, code, fragment", [
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "photo.txt", "not_text", "a PNG image, not text"),
    (b"\x7fELF\x02\x01\x01" + bytes(200), "tool.md", "not_text", "a program"),
    (bytes(range(256)) * 8, "blob.txt", "not_text", "looks binary"),
    (bytes([7, 8, 1, 2, 3, 4]) * 100 + b"some text", "ctl.txt", "not_text", "looks binary"),
    (build_pdf([["x"]]), "report.txt", "wrong_type", "Rename it to .pdf"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "scan.pdf", "wrong_type", "a PNG image"),
    (b"<html>not a pdf</html>", "page.pdf", "wrong_type", "not a PDF"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500), "old.docx", "wrong_type", "password-protected"),
    (b"just some words", "words.docx", "wrong_type", "not a Word document"),
])
def test_content_does_not_match_name(data, filename, code, fragment):
    assert fragment in refused(data, filename, code)


def test_zip_without_document_body_named_docx():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    assert "an Excel workbook" in refused(buffer.getvalue(), "sheet.docx", "wrong_type")


def test_truncated_pdf():
    data = build_pdf([[LOREM] * 20 for _ in range(5)])
    assert "damaged or incomplete" in refused(data[: len(data) * 2 // 3], "cut.pdf", "damaged")


def test_garbled_pdf():
    refused(b"%PDF-1.7\n" + bytes(range(256)) * 20, "noise.pdf", "damaged")


def test_encrypted_pdf():
    import pypdf  # test-only: makes a genuinely encrypted PDF

    writer = pypdf.PdfWriter(clone_from=io.BytesIO(build_pdf([["Top secret plans."]])))
    writer.encrypt(user_password="open-sesame", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    assert "password" in refused(out.getvalue(), "secret.pdf", "encrypted")


def test_scanned_pdf_has_no_text():
    # Pages that draw (a filled rectangle each) but carry no text layer, like a scan.
    data = pdf_from_streams([(b"0.5 g 56 56 400 600 re f", False)] * 2)
    assert "scanned" in refused(data, "scan.pdf", "no_text")


def test_pdf_page_limit(monkeypatch):
    monkeypatch.setattr(extract, "MAX_PDF_PAGES", 2)
    assert "3 pages" in refused(build_pdf([["a"], ["b"], ["c"]]), "long.pdf", "too_many_pages")


def test_docx_zip_bomb_by_ratio():
    # 30 MB of one repeated paragraph squeezes to ~30 KB: ~1000:1.
    document = b"<w:document><w:body>" + b"<w:p><w:r><w:t>aaaa</w:t></w:r></w:p>" * 800_000 + b"</w:body></w:document>"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", document)
    data = buffer.getvalue()
    assert len(data) < 100_000
    assert "ZIP bomb" in refused(data, "bomb.docx", "zip_bomb")


def test_docx_zip_bomb_by_declared_size():
    # A tiny archive whose directory claims its one entry unpacks to 2 GB.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("word/document.xml", "<w:document/>")
    data = bytearray(buffer.getvalue())
    directory = data.rindex(b"PK\x01\x02")
    data[directory + 24: directory + 28] = (2_000_000_000).to_bytes(4, "little")
    assert "ZIP bomb" in refused(bytes(data), "huge.docx", "zip_bomb")


def test_docx_zip_bomb_with_too_many_entries():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
        for i in range(extract.DOCX_MAX_ENTRIES + 1):
            archive.writestr(f"word/media/{i}.bin", b"")
    refused(buffer.getvalue(), "many.docx", "zip_bomb")


def test_docx_lying_about_its_size_is_damaged():
    # The directory says 100 bytes; the data inflates to 20 MB. zipfile stops at the
    # declared size, the CRC then fails: no memory is spent on the rest.
    body = b"<w:p/>" * 3_500_000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", body)
    data = bytearray(buffer.getvalue())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)
        data[at + offset: at + offset + 4] = (100).to_bytes(4, "little")
    refused(bytes(data), "liar.docx", "damaged")


def test_docx_entity_expansion_is_refused():
    laughs = ('<!DOCTYPE w:document [<!ENTITY a "haha"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
              '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>')
    data = docx_from_body("<w:p><w:r><w:t>&c;</w:t></w:r></w:p>", prolog=laughs)
    refused(data, "laughs.docx", "damaged")


def test_broken_docx_xml_is_damaged():
    data = docx_from_body("<w:p><w:r><w:t>unclosed")
    refused(data, "broken.docx", "damaged")


def test_text_too_long():
    data = b"word " * (extract.MAX_CHARS // 5 + 1000)
    assert "2,000,000 characters" in refused(data, "long.txt", "too_long")


def test_pdf_too_long_stops_early(monkeypatch):
    monkeypatch.setattr(extract, "MAX_CHARS", 1000)
    refused(build_pdf([[LOREM] * 5 for _ in range(10)]), "long.pdf", "too_long")


# --- the child process -----------------------------------------------------------


def test_timeout_kills_the_worker(monkeypatch):
    monkeypatch.setattr(extract, "EXTRACT_TIMEOUT_S", 0.001)
    start = time.monotonic()
    assert "took too long" in refused(build_pdf([[LOREM]]), "slow.pdf", "timeout")
    assert time.monotonic() - start < 5


def test_timeout_leaves_no_process_behind(monkeypatch, tmp_path):
    pid_file = tmp_path / "pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    monkeypatch.setattr(extract, "worker_command", lambda kind: [sys.executable, "-c", sleeper])
    monkeypatch.setattr(extract, "EXTRACT_TIMEOUT_S", 1)
    refused(b"hello", "slow.txt", "timeout")
    pid = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{pid}")


def test_cpu_limit_is_a_timeout(monkeypatch):
    spinner = "import resource; resource.setrlimit(resource.RLIMIT_CPU, (1, 2))\nwhile True: pass"
    monkeypatch.setattr(extract, "worker_command", lambda kind: [sys.executable, "-c", spinner])
    refused(b"hello", "spin.txt", "timeout")


def test_pdf_stream_bomb_runs_out_of_memory(monkeypatch):
    # One page whose 300 MB content stream fits in ~450 KB; PDFium aborts at the limit.
    monkeypatch.setattr(extract, "EXTRACT_MEMORY_BYTES", 200 * 1024 * 1024)
    bomb = deflate_bomb(b"BT /F1 11 Tf (x) Tj ET " * 40_000, 330)
    message = refused(pdf_from_streams([(bomb, True)]), "bomb.pdf", "too_much_memory")
    assert message.startswith("The file needs too much memory to read.")


def test_python_memory_error_in_worker(monkeypatch):
    # 64 MB of address space cannot hold a 19 MB upload read, decoded and normalised.
    monkeypatch.setattr(extract, "EXTRACT_MEMORY_BYTES", 64 * 1024 * 1024)
    refused("é ".encode() * 6_000_000, "big.txt", "too_much_memory")


def test_worker_crash(monkeypatch):
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(extract, "worker_command", lambda kind: [sys.executable, "-c", crash])
    assert "damaged" in refused(b"hello", "crash.txt", "crashed")


def test_worker_gets_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    spy = "import json, os; print(json.dumps({'ok': True, 'text': json.dumps(dict(os.environ))}))"
    monkeypatch.setattr(extract, "worker_command", lambda kind: [sys.executable, "-c", spy])
    environment = json.loads(extract_text(b"hello", "spy.txt").text)
    assert "OPENAI_API_KEY" not in environment
    assert set(environment) <= {"PATH", "LC_ALL", "LC_CTYPE"}


def test_worker_imports_without_django():
    code = ("import sys, documents_app.extract, documents_app.extract_worker; "
            "assert not [m for m in sys.modules if m.startswith('django')]")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", code], cwd=extract.ROOT, env=env, check=True)
