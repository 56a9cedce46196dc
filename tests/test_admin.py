"""The Django admin: the records are there for staff, spend records read-only."""

import pytest

from documents_app.models import Document
from sessions_app.models import RealtimeSession


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def test_documents_admin_filters_by_team_size_and_tokens(staff_client, alice):
    for title, tokens, size in (("small", 10, 50), ("large", 50_000, 3_000_000)):
        Document.objects.create(team=alice.memberships.get().team, owner=alice, title=title, filename="f.txt",
                                kind="text", text=title, sha256=title, tokens=tokens, size_bytes=size)
    page = staff_client.get("/admin/documents_app/document/?tokens=large").content.decode()
    assert ">large<" in page and ">small<" not in page
    page = staff_client.get("/admin/documents_app/document/?size=small").content.decode()
    assert ">small<" in page and ">large<" not in page
    page = staff_client.get(f"/admin/documents_app/document/?team__id__exact={alice.memberships.get().team.pk}")
    assert page.status_code == 200


@pytest.mark.parametrize("path", ["teams_app/team", "teams_app/membership", "sessions_app/modelprice",
                                  "sessions_app/realtimesession", "sessions_app/usagerecord", "sessions_app/budget",
                                  "documents_app/document"])
def test_every_admin_list_opens(staff_client, path):
    assert staff_client.get(f"/admin/{path}/").status_code == 200


def test_sessions_are_read_only_in_the_admin(staff_client, alice):
    session = RealtimeSession.objects.create(user=alice, model="gpt-realtime", voice="marin",
                                             turn_detection="server_vad",
                                             instructions="x")
    response = staff_client.post(f"/admin/sessions_app/realtimesession/{session.pk}/change/", {"model": "free"})
    assert response.status_code == 403
    session.refresh_from_db()
    assert session.model == "gpt-realtime"
    assert staff_client.get("/admin/sessions_app/usagerecord/add/").status_code == 403


def test_documents_come_from_uploads_not_the_admin(staff_client, alice, bob):
    """Adding one here was a 500 (no tokens, no size), and an edit of its text or title would leave its
    passages and their search index telling another story."""
    team = alice.memberships.get().team
    doc = Document.objects.create(team=team, owner=alice, title="Plan", filename="plan.txt", kind="text",
                                  text="Zephyr launches in March.", sha256="x", tokens=6, size_bytes=25)
    assert staff_client.get("/admin/documents_app/document/add/").status_code == 403
    response = staff_client.post(f"/admin/documents_app/document/{doc.pk}/change/", {
        "title": "Other", "text": "Nothing.", "team": team.pk, "owner": bob.pk, "visibility": "private"})
    assert response.status_code == 302
    doc.refresh_from_db()
    assert (doc.title, doc.text, doc.owner, doc.visibility) == ("Plan", "Zephyr launches in March.", bob, "private")
