"""The search seam on whichever engine the database gives: SQLite FTS5 here, PostgreSQL full-text when
`make test` runs this file again with DATABASE_URL on the machine's PostgreSQL."""

import random
import re

import pytest
from django.db import connection

from documents_app import search
from documents_app.models import Document
from tests.conftest import login

pytestmark = pytest.mark.django_db

FILLER = " ".join(f"Line {i} of the report covers the weather, the office and the canteen menu." for i in range(60))


def make(owner, title, text, visibility="team"):
    return Document.objects.create(
        team=owner.memberships.get().team, owner=owner, title=title, filename=f"{title}.md", kind="markdown",
        visibility=visibility, text=text, sha256=Document.hash_text(text), tokens=len(text.split()),
        size_bytes=len(text),
    )


@pytest.fixture
def library(alice, bob, charlie):
    return {
        "plan": make(alice, "Zephyr launch plan", f"# Launch\n\nZephyr launches in March. Zephyr is ready.\n\n{FILLER}"),
        "minutes": make(bob, "Board minutes", f"{FILLER}\n\n# Other\n\nSomeone mentioned zephyr once."),
        "budget": make(alice, "Budget", f"# Money\n\nThe budget is twelve thousand euros.\n\n{FILLER}"),
        "secret": make(alice, "Alice private zephyr notes", "Zephyr private details.", visibility="private"),
        "other": make(charlie, "Other team zephyr", "Zephyr belongs to the other team too. Zephyr zephyr."),
    }


def titles(user, query):
    return [hit.document.title for hit in search.search_documents(user, query)]


def test_the_engine_is_the_databases_own():
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE name = 'documents_passage_fts'")
        else:
            cursor.execute("SELECT indexname FROM pg_indexes WHERE indexname = 'documents_passage_search_gin'")
        assert cursor.fetchall(), connection.vendor


def test_what_a_search_reads_is_laid_out_for_it(library, bob):
    """PostgreSQL: a passage's row keeps its vector and text (a ranked candidate is one row read, not
    one more lookup in the TOAST table), and the title match the library falls back to can use the
    trigram index. SQLite: every passage is in the FTS5 index."""
    rng = random.Random(5)
    words = ["".join(rng.choice(["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo"]) for _ in range(3)) for _ in range(400)]
    text = "Supplier terms. " + " ".join(rng.choice(words) for _ in range(300))  # many words: a large vector
    make(bob, "Supply contract", text)
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT count(*) FROM documents_passage_fts WHERE documents_passage_fts MATCH 'supplier'")
            assert cursor.fetchone() == (1,)
            return
        cursor.execute("SELECT max(pg_column_size(p.*)) FROM documents_app_passage p")
        assert cursor.fetchone()[0] > 2_100  # past the 2 KB at which PostgreSQL moves values out by default
        cursor.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'documents_app_passage'")
        cursor.execute(f"SELECT count(*) FROM {cursor.fetchone()[0]}")
        assert cursor.fetchone() == (0,)
        cursor.execute("SET LOCAL enable_seqscan = off")  # as a large library would: a table this small is read whole
        titled = Document.objects.filter(title__icontains="upply con")
        assert "documents_title_trigrams" in titled.explain()
        assert [d.title for d in titled] == ["Supply contract"]


def test_most_relevant_first_and_only_what_the_user_may_see(library, bob, alice):
    found = titles(bob, "zephyr")
    assert found[:2] == ["Zephyr launch plan", "Board minutes"]
    assert "Other team zephyr" not in found and "Alice private zephyr notes" not in found
    assert "Alice private zephyr notes" in titles(alice, "zephyr")


def test_snippets_mark_the_matched_words(library, bob):
    hit = search.search_documents(bob, "twelve euros")[0]
    assert hit.document.title == "Budget"
    matched = [text.lower() for text, is_match in search.marked(hit.snippet) if is_match]
    assert "twelve" in matched and "euros" in matched


def test_the_api_ranks_and_gives_snippets_with_highlights(csrf_client, library, bob):
    login(csrf_client, bob)
    documents = csrf_client.get("/api/documents/", {"q": "zephyr launches"}).json()["documents"]
    assert documents[0]["title"] == "Zephyr launch plan"
    snippet, highlights = documents[0]["snippet"], documents[0]["highlights"]
    assert highlights and all(snippet[a:b].lower().startswith(("zephyr", "launch")) for a, b in highlights)
    assert "\ue000" not in snippet
    assert all(d["title"] != "Other team zephyr" for d in csrf_client.get("/api/documents/?q=zephyr").json()["documents"])


def test_the_api_answers_a_page_of_the_best_and_more_when_asked(csrf_client, alice, bob):
    for n in range(55):
        make(alice, f"Orbit note {n}", "orbit " * (n % 7 + 1) + "and the rest of the note.")
    login(csrf_client, bob)

    def found(**params):
        response = csrf_client.get("/api/documents/", {"q": "orbit", **params})
        return response.status_code, [d["title"] for d in response.json().get("documents", [])]

    status, page = found()
    assert status == 200 and len(page) == 20
    status, more = found(limit="50")
    assert status == 200 and len(more) == 50 and more[:20] == page
    for bad in ("0", "51", "-1", "ten", "", "1e2", "２"):
        status, documents = found(limit=bad)
        assert status == 400 and documents == [], bad


@pytest.mark.parametrize("query, shown", [
    ("ventilation", "ventilation"),  # in the middle of a long passage
    ("happy", "happy"),  # its stem ("happi") is not how the word is written
    ("art", "art"),  # its stem first shows inside another word ("start"), far before the word itself
])
def test_snippets_show_the_match_wherever_it_is_in_the_passage(alice, bob, query, shown):
    desks = " ".join(f"Row {i} holds desks and chairs." for i in range(30))
    text = (f"{desks} The crew will start soon. {desks} The ventilation hums. {desks} Everyone was happy. "
            f"{desks} Modern art hangs here. {desks}")
    make(alice, "Facilities", text)
    (hit,) = [h for h in search.search_documents(bob, query) if h.document.title == "Facilities"]
    runs = search.marked(hit.snippet)
    assert [part.lower() for part, matched in runs if matched] == [shown]
    words, known = re.findall(r"\w+", "".join(part for part, _ in runs)), set(re.findall(r"\w+", text))
    assert words and set(words) <= known, hit.snippet  # whole words only, none cut


def test_a_result_list_reads_no_texts_and_makes_no_query_per_document(csrf_client, library, alice, bob):
    from django.test.utils import CaptureQueriesContext

    hits = search.search_documents(bob, "zephyr")
    assert hits and all({"text", "outline"} <= h.document.get_deferred_fields() for h in hits)
    login(csrf_client, bob)

    def queries(url):
        with CaptureQueriesContext(connection) as captured:
            assert csrf_client.get(url, {"q": "zephyr"}).status_code == 200
        return len(captured)

    before = [queries("/api/documents/"), queries("/documents/")]
    for n in range(4):
        make(alice, f"Zephyr annex {n}", f"Zephyr annex number {n}.")
    assert len(search.search_documents(bob, "zephyr")) == len(hits) + 4
    assert [queries("/api/documents/"), queries("/documents/")] == before


def test_a_title_still_being_typed_is_found(library, bob):
    assert "Zephyr launch plan" in titles(bob, "Zeph")


@pytest.mark.parametrize("query", [
    '"unbalanced quote', "zephyr AND OR NOT", "NEAR(zephyr launch, 2)", "title:zephyr", "zephyr*", "-zephyr",
    "(((", "\x00", "zephyr\x00launch", "😀 zephyr", "\ud800 lone surrogate", "x" * 5000, "'; DROP TABLE x; --",
    "^$&|!:*", "", "   ", "ZEPHYR", "zéphyr",
])
def test_any_query_a_person_can_type_gets_results_or_nothing(library, bob, query, csrf_client):
    found = search.search_documents(bob, query)
    assert isinstance(found, list)
    login(csrf_client, bob)
    assert csrf_client.get("/api/documents/", {"q": query.replace("\ud800", "?")}).status_code == 200
    assert search.search_passages([library["plan"].pk], query) is not None


def test_passages_of_the_given_documents_best_first(library):
    plan, budget, other = library["plan"], library["budget"], library["other"]
    hits = search.search_passages([plan.pk, budget.pk], "What is the budget in euros?")
    assert hits and hits[0].passage.document_id == budget.pk and "twelve thousand euros" in hits[0].passage.text
    assert all(h.passage.document_id in (plan.pk, budget.pk) for h in hits)
    # Another document, however well it matches, is never searched unless asked for.
    assert all(h.passage.document_id != other.pk for h in search.search_passages([plan.pk], "zephyr team"))
    assert search.search_passages([], "zephyr") == []


def test_only_the_given_documents_even_when_another_documents_passages_lie_among_theirs(library):
    """SQLite asks FTS5 for each document's rowid range: passages of another document written in
    between (a document's passages added later) must still be left out."""
    from documents_app.models import Passage

    plan, other = library["plan"], library["other"]
    last = plan.passages.order_by("-position").first()
    Passage.objects.create(document=plan, position=last.position + 1, start=0, end=0, tokens=9,
                           text="Zephyr belongs to the launch team.", title=plan.title)
    in_between = other.passages.first()
    assert plan.passages.order_by("pk").first().pk < in_between.pk < plan.passages.order_by("pk").last().pk
    assert "belongs" in in_between.text
    hits = search.search_passages([plan.pk], "who does it belong to", limit=20)
    assert [h.passage.text for h in hits] == ["Zephyr belongs to the launch team."]


def test_a_word_every_passage_holds_does_not_drown_the_telling_one(alice):
    """'handbook' is in every passage (the title); the rarer word decides, and a question with only the
    common word still gets passages, in document order."""
    sections = "\n\n".join(f"# Part {n}\n\n" + " ".join(f"Part {n} sentence {i} about desks." for i in range(40))
                             for n in range(6))
    doc = make(alice, "Office handbook", sections.replace("Part 4 sentence 7", "Part 4 sentence 7 about ventilation"))
    assert doc.passages.count() >= 3
    hits = search.search_passages([doc.pk], "what does the handbook say about ventilation")
    assert "ventilation" in hits[0].passage.text
    common = search.search_passages([doc.pk], "handbook", limit=2)
    assert [h.passage.position for h in common] == [0, 1]


def test_a_deleted_document_is_found_no_more(library, bob):
    library["minutes"].delete()
    assert "Board minutes" not in titles(bob, "zephyr")
    assert search.search_passages([library["minutes"].pk], "zephyr") == []
