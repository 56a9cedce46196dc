"""POST /documents/upload: what is stored, what is refused, and that a refusal leaves nothing."""

import base64
import io
import random
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from documents_app import extract
from documents_app.models import Document
from documents_app.tokens import count_tokens
from tests.conftest import login


def upload(client, name, data, title="", visibility="team"):
    return client.post("/documents/upload", {"file": SimpleUploadedFile(name, data), "title": title,
                                             "visibility": visibility})


def test_upload_stores_text_tokens_and_owner(csrf_client, bob):
    login(csrf_client, bob)
    text = "Project Zephyr launches on the fourth of March.\n\nThe budget is twelve thousand euros."
    response = upload(csrf_client, "plan.md", text.encode(), title="  Launch   plan ")
    assert response.status_code == 302
    doc = Document.objects.get()
    assert response["Location"] == f"/documents/{doc.pk}/"
    assert (doc.title, doc.kind, doc.owner, doc.team.name, doc.visibility) == ("Launch plan", "markdown", bob, "Demo", "team")
    assert doc.text == text and doc.tokens == count_tokens(text) and doc.sha256 == Document.hash_text(text)
    page = csrf_client.get(f"/documents/{doc.pk}/").content.decode()
    assert f'<dd id="doc-tokens">{doc.tokens}</dd>' in page and "bob" in page


def test_long_runs_without_spaces_are_counted_and_stored(csrf_client, bob):
    """A Markdown file with an embedded image (a 320,000-character base64 run) made the tokenizer refuse
    its one piece (more than 200,000 tokens): a 500. Emoji and CJK runs make up to 4 tokens a character."""
    login(csrf_client, bob)
    image = base64.b64encode(random.Random(7).randbytes(240_000)).decode()
    text = f"# Launch plan\n\n![chart](data:image/png;base64,{image})"
    assert upload(csrf_client, "plan.md", text.encode()).status_code == 302
    doc = Document.objects.get()
    assert doc.text == text and doc.tokens == count_tokens(text) > 150_000
    for run in ("\U0001F600" * 400_000, "\u6f22" * 1_000_000):
        assert count_tokens(run) >= 200_000  # counted, in pieces the tokenizer takes


def test_title_defaults_to_the_file_name(csrf_client, bob):
    login(csrf_client, bob)
    upload(csrf_client, "notes.txt", b"Some notes for the team.")
    assert Document.objects.get().title == "notes.txt"


def test_private_upload_is_hidden_from_teammates(csrf_client, bob, alice):
    login(csrf_client, bob)
    upload(csrf_client, "mine.txt", b"Bob's private thoughts.", visibility="private")
    doc = Document.objects.get()
    login(csrf_client, alice)
    assert csrf_client.get(f"/documents/{doc.pk}/").status_code == 404


def test_read_only_member_cannot_upload(csrf_client, erin):
    login(csrf_client, erin)
    refused = upload(csrf_client, "x.txt", b"Read-only attempt.")
    assert refused.status_code == 403
    # The library's page, saying why where the upload script looks for the server's messages.
    assert "<div data-upload-messages><p class=\"error\" role=\"alert\">You are now a read-only member" in \
        refused.content.decode()
    assert Document.objects.count() == 0
    assert b"Add a document" not in csrf_client.get("/documents/").content


def test_upload_wrong_method_and_anonymous(csrf_client, client, bob):
    assert client.post("/documents/upload", {}).status_code == 302  # to the login page
    login(csrf_client, bob)
    assert csrf_client.get("/documents/upload").status_code == 405


def test_upload_needs_csrf(bob):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    assert upload(client, "x.txt", b"No token here.").status_code == 403
    assert Document.objects.count() == 0


def test_identical_content_in_the_team_is_pointed_to(csrf_client, alice, bob):
    login(csrf_client, alice)
    upload(csrf_client, "plan.txt", b"Same words exactly.", title="Original")
    login(csrf_client, bob)
    response = upload(csrf_client, "copy.md", b"Same words exactly.")
    assert response.status_code == 409
    original = Document.objects.get()
    assert f'href="/documents/{original.pk}/"' in response.content.decode()
    assert Document.objects.count() == 1


def test_a_private_duplicate_is_not_revealed(csrf_client, alice, bob):
    login(csrf_client, alice)
    upload(csrf_client, "secret.txt", b"Identical text.", title="Alice secret", visibility="private")
    login(csrf_client, bob)
    response = upload(csrf_client, "mine.txt", b"Identical text.")
    assert response.status_code == 302 and Document.objects.count() == 2


def test_same_content_in_another_team_is_stored(csrf_client, alice, charlie):
    login(csrf_client, alice)
    upload(csrf_client, "a.txt", b"Shared knowledge.")
    login(csrf_client, charlie)
    assert upload(csrf_client, "a.txt", b"Shared knowledge.").status_code == 302
    assert Document.objects.count() == 2


def _zip_bomb():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", b"<w:document>" + b" " * 60_000_000 + b"</w:document>")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, data",
    [
        ("scan.pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog"),  # truncated
        ("report.docx", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"),  # a PDF named .docx
        ("notes.txt", b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 20),  # binary named .txt
        ("bomb.docx", None),
        ("page.html", b"<html><script>" + b"alert(1);" * 500 + b"</script></html>"),
        ("tool.exe", b"MZ\x90\x00"),
        ("notes." + "t" * 250, b"Plain text, with an extension no file system takes in a name."),  # was a 500
    ],
)
def test_bad_files_get_a_message_and_leave_nothing(csrf_client, bob, tmp_path, settings, name, data):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    login(csrf_client, bob)
    response = upload(csrf_client, name, data if data is not None else _zip_bomb())
    assert response.status_code == 400
    page = response.content.decode()
    assert 'role="alert"' in page
    assert Document.objects.count() == 0
    assert list(tmp_path.iterdir()) == []  # no temporary upload left behind


def test_oversized_upload_is_refused_before_the_body_is_read(csrf_client, bob, monkeypatch):
    login(csrf_client, bob)
    # A Content-Length past the limit is answered without parsing a byte of the body.
    response = csrf_client.generic(
        "POST", "/documents/upload", b"x" * 10, content_type="multipart/form-data; boundary=zz",
        CONTENT_LENGTH=str(extract.MAX_FILE_BYTES * 2),
    )
    assert response.status_code == 413
    assert "larger than" in response.content.decode()
    assert Document.objects.count() == 0


def test_oversized_upload_with_a_lying_length_stops_streaming(csrf_client, bob, monkeypatch):
    monkeypatch.setattr(extract, "MAX_FILE_BYTES", 1024)
    monkeypatch.setattr("documents_app.uploads.MAX_FILE_BYTES", 1024)
    login(csrf_client, bob)
    response = upload(csrf_client, "big.txt", b"a" * 5000)
    assert response.status_code == 413
    assert Document.objects.count() == 0


def test_a_run_of_a_million_characters_without_whitespace_is_counted_and_stored(csrf_client, bob):
    """The tokenizer refuses a million characters in one call; text was cut only at whitespace, so one long
    run reached it whole and the upload was a 500."""
    login(csrf_client, bob)
    run = "a" * 1_500_000
    assert count_tokens(run) > 0
    # Cut inside the run at most every 500,000 characters: off by at most a token per cut.
    assert abs(count_tokens(run) - 3 * count_tokens("a" * 500_000)) <= 3
    response = upload(csrf_client, "run.txt", ("word " * 30_000 + run).encode())
    assert response.status_code == 302, response.content[:300]
    assert Document.objects.get().tokens == count_tokens("word " * 30_000 + run)
