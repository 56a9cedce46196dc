"""The session's own endpoints: attach the call, end, read. Same battery for each."""

import datetime
import json
import uuid

import pytest
from django.utils import timezone

from sessions_app import upstream
from sessions_app.models import RealtimeSession, TranscriptEntry
from tests.conftest import login
from tests.upstream_fake import FakeUpstream


@pytest.fixture
def fake(monkeypatch):
    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_client", fake.client)
    return fake


@pytest.fixture
def session(alice):
    return RealtimeSession.objects.create(
        user=alice, team=alice.memberships.get().team, model="gpt-realtime", voice="marin",
        turn_detection="server_vad", secret_expires_at=timezone.now() + datetime.timedelta(minutes=1),
        instructions="x",
    )


def post(client, path, body=None):
    return client.post(path, data=json.dumps(body or {}), content_type="application/json")


def test_owner_attaches_the_call(csrf_client, alice, session):
    login(csrf_client, alice)
    response = post(csrf_client, f"/api/sessions/{session.pk}/call", {"call_id": "rtc_abc123"})
    assert response.status_code == 204
    session.refresh_from_db()
    assert session.call_id == "rtc_abc123" and session.status == "active" and session.connected_at


@pytest.mark.parametrize("body", [{"call_id": "abc"}, {"call_id": 5}, {}, [1], {"call_id": "rtc_" + "x" * 200}])
def test_bad_call_ids_are_400(csrf_client, alice, session, body):
    login(csrf_client, alice)
    assert post(csrf_client, f"/api/sessions/{session.pk}/call", body).status_code == 400
    session.refresh_from_db()
    assert session.call_id == "" and session.status == "created"


def test_call_on_an_ended_session_is_409(csrf_client, alice, session):
    session.end("user")
    login(csrf_client, alice)
    assert post(csrf_client, f"/api/sessions/{session.pk}/call", {"call_id": "rtc_1"}).status_code == 409


@pytest.mark.parametrize("who", ["bob", "charlie", "staff"])
def test_others_cannot_attach_or_end(csrf_client, session, who, request):
    login(csrf_client, request.getfixturevalue(who))
    assert post(csrf_client, f"/api/sessions/{session.pk}/call", {"call_id": "rtc_1"}).status_code == 404
    assert post(csrf_client, f"/api/sessions/{session.pk}/end").status_code == 404
    session.refresh_from_db()
    assert session.status == "created"


def test_end_marks_the_session_and_hangs_up(csrf_client, alice, session, fake):
    session.call_id = "rtc_live1"
    session.save()
    login(csrf_client, alice)
    response = post(csrf_client, f"/api/sessions/{session.pk}/end")
    assert response.status_code == 200
    assert response.json()["status"] == "ended" and response.json()["totals"]["cost_usd"] == "0.000000"
    session.refresh_from_db()
    assert session.status == "ended" and session.end_reason == "user" and session.ended_at
    assert [r.url.path for r in fake.requests] == ["/v1/realtime/calls/rtc_live1/hangup"]
    # Ending twice changes nothing and does not hang up again.
    ended_at = session.ended_at
    assert post(csrf_client, f"/api/sessions/{session.pk}/end").status_code == 200
    session.refresh_from_db()
    assert session.ended_at == ended_at and len(fake.requests) == 1


def test_end_survives_a_refused_hangup(csrf_client, alice, session, fake):
    fake.mode = 404
    session.call_id = "rtc_gone"
    session.save()
    login(csrf_client, alice)
    assert post(csrf_client, f"/api/sessions/{session.pk}/end").status_code == 200
    session.refresh_from_db()
    assert session.status == "ended"


def test_detail_for_owner_team_admin_and_staff(csrf_client, alice, bob, staff):
    own = RealtimeSession.objects.create(
        user=bob, team=bob.memberships.get().team, model="gpt-realtime", voice="marin", turn_detection="server_vad",
        secret_expires_at=timezone.now(), instructions="x",
    )
    TranscriptEntry.objects.create(session=own, item_id="item_1", role="user", text="hello")
    for user in (bob, alice, staff):  # owner, team admin, staff
        login(csrf_client, user)
        response = csrf_client.get(f"/api/sessions/{own.pk}")
        assert response.status_code == 200, user
        assert response.json()["transcript"][0]["text"] == "hello"


def test_detail_hidden_from_teammates_and_outsiders(csrf_client, session, bob, charlie):
    for user in (bob, charlie):
        login(csrf_client, user)
        assert csrf_client.get(f"/api/sessions/{session.pk}").status_code == 404


def test_wrong_methods_are_405(csrf_client, alice, session):
    login(csrf_client, alice)
    assert csrf_client.get(f"/api/sessions/{session.pk}/end").status_code == 405
    assert csrf_client.get(f"/api/sessions/{session.pk}/call").status_code == 405
    assert post(csrf_client, f"/api/sessions/{session.pk}").status_code == 405


def test_bad_and_unknown_ids_are_404(csrf_client, alice):
    login(csrf_client, alice)
    assert csrf_client.get("/api/sessions/not-a-uuid").status_code == 404
    assert csrf_client.get(f"/api/sessions/{uuid.uuid4()}").status_code == 404
    assert post(csrf_client, f"/api/sessions/{uuid.uuid4()}/end").status_code == 404


def test_anonymous_gets_401(csrf_client, session):
    assert csrf_client.get(f"/api/sessions/{session.pk}").status_code == 401
    assert post(csrf_client, f"/api/sessions/{session.pk}/end").status_code == 401
