"""Passages: a few hundred tokens, cut at sentences, never across a page or a heading, a little overlap,
exact token counts, and where each came from: the PDF page, or the nearest heading (Markdown, HTML, Word)."""

from html import escape

import pytest

from documents_app import extract
from documents_app.models import Document, Passage
from documents_app.passages import OVERLAP_TOKENS, TARGET_TOKENS, sections, split
from documents_app.tokens import count_tokens
from tests.test_extract import W_NS, build_pdf, docx_from_body, docx_paragraph


def sentences(prefix, count):
    return " ".join(f"{prefix} sentence {i} says something about the launch and the budget." for i in range(count))


def test_passages_are_a_few_hundred_exact_tokens_cut_at_sentence_ends():
    text = sentences("A", 400)
    pieces = split(text)
    assert len(pieces) > 5
    for piece in pieces:
        assert piece.tokens == count_tokens(piece.text) <= TARGET_TOKENS
        assert piece.tokens > TARGET_TOKENS // 2
        assert piece.text.endswith(".") and piece.text[0].isupper()
        assert text[piece.start:piece.end].strip() == piece.text


def test_consecutive_passages_overlap_a_little():
    pieces = split(sentences("B", 300))
    for before, after in zip(pieces, pieces[1:]):
        shared = before.text[after.start - before.start:]
        assert after.start < before.end and after.text.startswith(shared)
        assert 0 < count_tokens(shared) <= OVERLAP_TOKENS
    # Together the passages cover the whole text.
    assert pieces[0].start == 0 and pieces[-1].end == len(sentences("B", 300))


def test_chinese_and_japanese_text_is_cut_at_its_full_stops():
    """Without spaces after their stops such text was one long sentence, cut every 1,000 characters into
    passages of about 750 tokens."""
    text = "".join(f"第{i}章では、発売の予定と予算について説明します。" for i in range(300))
    pieces = split(text)
    assert len(pieces) > 5
    for piece in pieces:
        assert piece.tokens == count_tokens(piece.text) <= TARGET_TOKENS
        assert piece.text.endswith("。") and piece.text.startswith("第")
    # A run with no stop and no space at all is still cut into passages that fit.
    run = "発売の予定と予算について説明し" * 200
    pieces = split(run)
    assert len(pieces) > 5 and all(p.tokens <= TARGET_TOKENS for p in pieces)
    assert "".join(run[p.start:p.end] for p in pieces) == run


def test_a_sentence_longer_than_a_passage_is_cut_at_spaces():
    text = " ".join(["word"] * 2000) + "."
    pieces = split(text)
    assert len(pieces) > 3 and all(p.tokens <= TARGET_TOKENS for p in pieces)
    assert "".join(text[p.start:p.end] for p in pieces).split() == text.split()


def test_markdown_passages_carry_their_heading_and_never_cross_one():
    text = f"# Launch\n\n{sentences('L', 3)}\n\n## Budget plan\n\n{sentences('M', 60)}\n\n## Team\n\n{sentences('T', 2)}"
    pieces = split(text, "markdown")
    assert [p.section for p in pieces][0] == "Launch" and pieces[-1].section == "Team"
    budget = [p for p in pieces if p.section == "Budget plan"]
    assert len(budget) >= 2 and all("T sentence" not in p.text and "L sentence" not in p.text for p in budget)
    assert all(p.page is None for p in pieces)


def test_pdf_passages_carry_their_page():
    pages = [[f"Page {n} line {i} tells about the launch of the project." for i in range(40)] for n in (1, 2, 3)]
    pages[1][5] = "The rollout code is TANGERINE-7."
    result = extract.extract_text(build_pdf(pages), "report.pdf")
    assert [page for _, page in result.outline["pages"]] == [1, 2, 3]
    pieces = split(result.text, result.kind, result.outline)
    assert {p.page for p in pieces} == {1, 2, 3}
    planted = [p for p in pieces if "TANGERINE-7" in p.text]
    assert [p.page for p in planted] == [2]
    for piece in pieces:
        assert f"Page {piece.page} line" in piece.text and all(f"Page {n} line" not in piece.text
                                                              for n in (1, 2, 3) if n != piece.page)


def test_html_headings_from_extraction():
    html = (f"<html><body><h1>Handbook</h1><p>{sentences('H', 2)}</p><h2>Travel &amp; expenses</h2>"
            f"<p>{sentences('X', 2)}</p><script>var h2 = 1;</script></body></html>")
    result = extract.extract_text(html.encode(), "handbook.html")
    assert result.outline == {"headings": ["Handbook", "Travel & expenses"]}
    assert [p.section for p in split(result.text, result.kind, result.outline)] == ["Handbook", "Travel & expenses"]


def test_word_heading_styles_from_extraction():
    heading = lambda text, style: (f'<w:p><w:pPr><w:pStyle w:val="{style}"/></w:pPr><w:r><w:t>{escape(text)}</w:t>'
                                   '</w:r></w:p>')
    body = heading("Contract", "Title") + docx_paragraph(sentences("C", 2)) + heading("Payment terms", "Heading2") \
        + docx_paragraph(sentences("P", 2))
    result = extract.extract_text(docx_from_body(body), "contract.docx")
    assert W_NS and result.outline == {"headings": ["Contract", "Payment terms"]}
    assert [p.section for p in split(result.text, result.kind, result.outline)] == ["Contract", "Payment terms"]


def test_text_before_the_first_heading_and_empty_sections():
    text = f"{sentences('I', 2)}\n\n# Empty\n\n# Full\n\n{sentences('F', 2)}"
    found = sections(text, "markdown")
    assert [s.heading for s in found] == ["", "Empty", "Full"]  # "Empty" holds only its heading line
    assert [p.section for p in split(text, "markdown")] == ["", "Empty", "Full"]


@pytest.mark.django_db
def test_stored_documents_get_passages_and_lose_them_with_the_document(alice):
    text = f"# Plan\n\n{sentences('D', 80)}"
    document = Document.objects.create(
        team=alice.memberships.get().team, owner=alice, title="Plan", filename="plan.md", kind="markdown",
        text=text, sha256=Document.hash_text(text), tokens=count_tokens(text), size_bytes=len(text),
    )
    passages = list(document.passages.all())
    assert len(passages) >= 3 and [p.position for p in passages] == list(range(len(passages)))
    assert all(p.title == "Plan" and p.section == "Plan" for p in passages)
    # The document page can point at each passage.
    runs = document.segments()
    assert "".join(text for _, text in runs) == text
    assert [pk for pk, _ in runs if pk] == [p.pk for p in passages]
    document.delete()
    assert Passage.objects.count() == 0
