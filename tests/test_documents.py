"""The library pages and API: the access battery for each, and what they show."""

import uuid

import pytest

from documents_app.models import Document
from tests.conftest import login


def make_doc(owner, title="Launch plan", text="Project Zephyr launches in March.", visibility=Document.TEAM):
    return Document.objects.create(
        team=owner.memberships.get().team, owner=owner, title=title, filename=f"{title}.txt", kind="text",
        visibility=visibility, text=text, sha256=Document.hash_text(text), tokens=7, size_bytes=len(text),
    )


@pytest.fixture
def doc(alice):
    return make_doc(alice)


@pytest.fixture
def private_doc(alice):
    return make_doc(alice, "Alice notes", "My private salary notes.", Document.PRIVATE)


# ---- list and search ----

def test_library_lists_what_the_user_may_see(csrf_client, alice, bob, charlie, doc, private_doc):
    login(csrf_client, bob)
    page = csrf_client.get("/documents/").content.decode()
    assert "Launch plan" in page and "Alice notes" not in page
    login(csrf_client, alice)
    assert "Alice notes" in csrf_client.get("/documents/").content.decode()
    login(csrf_client, charlie)
    page = csrf_client.get("/documents/").content.decode()
    assert "Launch plan" not in page and "No documents yet" in page


def test_the_library_lists_every_document_a_page_at_a_time(csrf_client, alice):
    """It stopped at 200 documents, with no word of the rest."""
    for n in range(53):
        make_doc(alice, f"Doc {n:02d}", f"Text number {n}.")
    login(csrf_client, alice)
    first = csrf_client.get("/documents/").content.decode()
    assert first.count('href="/documents/') >= 50 and "Page 1 of 2 (53 documents)" in first and 'rel="next"' in first
    assert "Doc 52" in first and "Doc 02" not in first  # newest first
    last = csrf_client.get("/documents/?page=2").content.decode()
    assert "Doc 00" in last and "Doc 02" in last and "Doc 52" not in last and 'rel="prev"' in last
    assert "Doc 00" in csrf_client.get("/documents/?page=99").content.decode()  # past the end: the last page
    assert csrf_client.get("/documents/?page=nonsense").status_code == 200


def test_library_search_by_title_and_text(csrf_client, bob, alice, doc):
    make_doc(alice, "Budget", "Twelve thousand euros.")
    login(csrf_client, bob)
    assert "Launch plan" in csrf_client.get("/documents/?q=zephyr").content.decode()
    found = csrf_client.get("/documents/?q=euros").content.decode()
    assert "Budget" in found and "Launch plan" not in found


def test_library_anonymous_redirects(client):
    assert client.get("/documents/").status_code == 302


def test_library_wrong_method(csrf_client, alice):
    login(csrf_client, alice)
    assert csrf_client.post("/documents/").status_code == 405


# ---- detail ----

def test_detail_owner_and_teammate(csrf_client, alice, bob, erin, doc):
    for user in (alice, bob, erin):
        login(csrf_client, user)
        response = csrf_client.get(f"/documents/{doc.pk}/")
        assert response.status_code == 200
        page = response.content.decode()
        assert "Project Zephyr launches in March." in page and "alice" in page


def test_detail_outsider_and_private_are_404(csrf_client, bob, charlie, doc, private_doc):
    login(csrf_client, charlie)
    assert csrf_client.get(f"/documents/{doc.pk}/").status_code == 404
    login(csrf_client, bob)
    assert csrf_client.get(f"/documents/{private_doc.pk}/").status_code == 404


def test_detail_bad_ids_and_method(csrf_client, alice, doc):
    login(csrf_client, alice)
    assert csrf_client.get("/documents/not-a-uuid/").status_code == 404
    assert csrf_client.get(f"/documents/{uuid.uuid4()}/").status_code == 404
    assert csrf_client.post(f"/documents/{doc.pk}/").status_code == 405


# ---- delete ----

def test_owner_deletes(csrf_client, alice, doc):
    login(csrf_client, alice)
    assert csrf_client.post(f"/documents/{doc.pk}/delete").status_code == 302
    assert not Document.objects.filter(pk=doc.pk).exists()


def test_team_admin_deletes_a_members_document(csrf_client, alice, bob):
    bobs = make_doc(bob, "Bob's doc", "Bob wrote this.")
    login(csrf_client, alice)
    assert csrf_client.post(f"/documents/{bobs.pk}/delete").status_code == 302
    assert not Document.objects.filter(pk=bobs.pk).exists()


def test_member_and_read_only_cannot_delete_others(csrf_client, bob, erin, doc):
    for user in (bob, erin):
        login(csrf_client, user)
        assert csrf_client.post(f"/documents/{doc.pk}/delete").status_code == 403
    assert Document.objects.filter(pk=doc.pk).exists()


def test_an_owner_made_read_only_cannot_delete_their_document(csrf_client, bob, doc):
    """Read-only members cannot delete, their own documents included (an owner made read-only could)."""
    from teams_app.models import Membership

    Membership.objects.filter(user=bob).update(role=Membership.READ_ONLY)
    login(csrf_client, bob)
    mine = Document.objects.create(owner=bob, team=doc.team, title="Mine", text="x", sha256=Document.hash_text("x"),
                                   kind="text", tokens=1, size_bytes=1)
    assert csrf_client.post(f"/documents/{mine.pk}/delete").status_code == 403
    assert "Delete" not in csrf_client.get(f"/documents/{mine.pk}/").content.decode()
    assert Document.objects.filter(pk=mine.pk).exists()
    Membership.objects.filter(user=bob).update(role=Membership.MEMBER)
    assert "Delete" in csrf_client.get(f"/documents/{mine.pk}/").content.decode()
    assert csrf_client.post(f"/documents/{mine.pk}/delete").status_code == 302
    assert not Document.objects.filter(pk=mine.pk).exists()


def test_deleting_asks_in_words_that_fit_who_can_see_it(csrf_client, alice, doc, private_doc):
    login(csrf_client, alice)
    assert "for everyone in" in csrf_client.get(f"/documents/{doc.pk}/").content.decode()
    page = csrf_client.get(f"/documents/{private_doc.pk}/").content.decode()
    assert "Delete “Alice notes”? Its passages" in page and "for everyone in" not in page


def test_outsider_delete_is_404(csrf_client, charlie, doc):
    login(csrf_client, charlie)
    assert csrf_client.post(f"/documents/{doc.pk}/delete").status_code == 404
    assert Document.objects.filter(pk=doc.pk).exists()


def test_delete_wrong_method_and_bad_id(csrf_client, alice, doc):
    login(csrf_client, alice)
    assert csrf_client.get(f"/documents/{doc.pk}/delete").status_code == 405
    assert csrf_client.post(f"/documents/{uuid.uuid4()}/delete").status_code == 404
    assert Document.objects.filter(pk=doc.pk).exists()


def test_delete_needs_csrf(alice, doc):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(f"/documents/{doc.pk}/delete").status_code == 403
    assert Document.objects.filter(pk=doc.pk).exists()


# ---- API ----

def test_api_lists_visible_documents(csrf_client, bob, alice, doc, private_doc):
    login(csrf_client, bob)
    data = csrf_client.get("/api/documents/").json()
    assert [d["title"] for d in data["documents"]] == ["Launch plan"]
    assert data["documents"][0]["tokens"] == 7 and data["documents"][0]["id"] == str(doc.pk)
    login(csrf_client, alice)
    assert {d["title"] for d in csrf_client.get("/api/documents/").json()["documents"]} == {"Launch plan", "Alice notes"}


def test_api_search_and_outsider(csrf_client, charlie, bob, doc):
    login(csrf_client, bob)
    assert csrf_client.get("/api/documents/?q=march").json()["documents"][0]["title"] == "Launch plan"
    assert csrf_client.get("/api/documents/?q=nothing-like-this").json()["documents"] == []
    login(csrf_client, charlie)
    assert csrf_client.get("/api/documents/").json()["documents"] == []


def test_api_anonymous_and_method(csrf_client, client, alice):
    assert client.get("/api/documents/").status_code == 401
    login(csrf_client, alice)
    assert csrf_client.post("/api/documents/").status_code == 405
