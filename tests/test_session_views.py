"""The conversation's own endpoints: resume in a new call, end, read. Same battery for each."""

import json
import uuid
from decimal import Decimal

import pytest
from django.db import DatabaseError

from sessions_app import upstream, views
from sessions_app.models import Budget, Call, RealtimeSession, TranscriptEntry
from tests.conftest import login
from tests.upstream_fake import ANSWER, OFFER, SECRET, FakeUpstream, answer


@pytest.fixture
def fake(monkeypatch, settings):
    settings.OPENAI_API_KEY = "sk-test-FAKE-session-views"
    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    return fake


CONFIG = {"type": "realtime", "model": "gpt-realtime", "instructions": "x", "max_output_tokens": 4096,
          "tools": [], "tool_choice": "auto"}


@pytest.fixture
def session(alice):
    session = RealtimeSession.objects.create(
        user=alice, team=alice.memberships.get().team, model="gpt-realtime", voice="marin",
        turn_detection="server_vad", instructions="x", session_config=CONFIG,
    )
    Call.objects.create(session=session, number=1, call_id="rtc_live1", sealed_secret=upstream.seal("ek_first"))
    return session


def post(client, path, body=None):
    return client.post(path, data=json.dumps(body if body is not None else {}), content_type="application/json")


def resume(client, session, body=None):
    return post(client, f"/api/sessions/{session.pk}/calls", {"sdp": OFFER} if body is None else body)


def test_owner_resumes_the_conversation_in_a_new_call(csrf_client, alice, session, fake):
    login(csrf_client, alice)
    response = resume(csrf_client, session)
    assert response.status_code == 201, response.content
    assert response.json() == {"sdp": ANSWER, "call": 2}
    # The same session config, minted again; the new call created by the server with the browser's offer.
    secret_request, call_request = fake.requests
    assert json.loads(secret_request.content)["session"] == CONFIG
    assert call_request.headers["Authorization"] == f"Bearer {SECRET}" and call_request.content == OFFER.encode()
    first, second = session.calls.order_by("number")
    assert (first.status, first.end_reason, first.sealed_secret) == ("ended", "replaced", "")
    assert (second.number, second.call_id, second.status) == (2, "rtc_test1", "active")
    assert upstream.unseal(second.sealed_secret) == SECRET
    session.refresh_from_db()
    assert session.status == "active"


def test_resuming_an_ended_conversation_is_409(csrf_client, alice, session, fake):
    session.end("user")
    login(csrf_client, alice)
    response = resume(csrf_client, session)
    assert response.status_code == 409 and response.json()["error"]["code"] == "session_ended"
    assert fake.requests == []


def test_resuming_past_the_budget_is_402(csrf_client, alice, session, fake):
    Budget.objects.create(user=alice, monthly_limit_usd=Decimal("0.01"))
    login(csrf_client, alice)
    assert resume(csrf_client, session).status_code == 402
    assert fake.requests == [] and session.calls.count() == 1


@pytest.mark.parametrize("body", [{}, {"sdp": "hello"}, {"sdp": OFFER, "model": "x"}, [1]])
def test_a_bad_resume_body_is_400(csrf_client, alice, session, fake, body):
    login(csrf_client, alice)
    assert resume(csrf_client, session, body).status_code == 400
    assert fake.requests == [] and session.calls.count() == 1


def test_a_resumed_call_that_cannot_be_recorded_is_hung_up(csrf_client, alice, session, fake, monkeypatch):
    def broken(*args):
        raise DatabaseError("gone")

    monkeypatch.setattr(views, "_next_call", broken)
    login(csrf_client, alice)
    assert resume(csrf_client, session).status_code == 503
    assert fake.requests[-1].url.path == "/v1/realtime/calls/rtc_test1/hangup"
    assert session.calls.count() == 1


@pytest.mark.parametrize("who", ["bob", "charlie", "staff"])
def test_others_cannot_resume_or_end(csrf_client, session, who, request, fake):
    login(csrf_client, request.getfixturevalue(who))
    assert resume(csrf_client, session).status_code == 404
    assert post(csrf_client, f"/api/sessions/{session.pk}/end").status_code == 404
    session.refresh_from_db()
    assert session.status == "active" and fake.requests == []


def test_end_marks_the_session_and_hangs_up(csrf_client, alice, session, fake):
    login(csrf_client, alice)
    response = post(csrf_client, f"/api/sessions/{session.pk}/end")
    assert response.status_code == 200
    assert response.json()["status"] == "ended" and response.json()["totals"]["cost_usd"] == "0.00000000"
    assert response.json()["calls"][0]["end_reason"] == "user"
    session.refresh_from_db()
    assert session.status == "ended" and session.end_reason == "user" and session.ended_at
    call = session.calls.get()
    assert call.status == "ended" and call.sealed_secret == ""
    assert [r.url.path for r in fake.requests] == ["/v1/realtime/calls/rtc_live1/hangup"]
    # Ending twice changes nothing and does not hang up again.
    ended_at = session.ended_at
    assert post(csrf_client, f"/api/sessions/{session.pk}/end").status_code == 200
    session.refresh_from_db()
    assert session.ended_at == ended_at and len(fake.requests) == 1


def test_end_survives_a_refused_hangup(csrf_client, alice, session, fake):
    fake.mode = 404
    login(csrf_client, alice)
    assert post(csrf_client, f"/api/sessions/{session.pk}/end").status_code == 200
    session.refresh_from_db()
    assert session.status == "ended"


@pytest.mark.parametrize("status, gone", [(404, True), (500, False), (401, False)])
async def test_hanging_up_a_call_the_upstream_no_longer_knows_is_done(fake, status, gone):
    """404 call_id_not_found with no secret of the call's to try: the call has ended already, nothing to retry;
    any other refusal is an error."""
    fake.mode = status
    if gone:
        assert await upstream.hangup("rtc_gone") is None
    else:
        with pytest.raises(upstream.UpstreamError) as refused:
            await upstream.hangup("rtc_gone")
        assert refused.value.http_status == status and refused.value.status == 502
    assert [r.url.path for r in fake.requests] == ["/v1/realtime/calls/rtc_gone/hangup"]


@pytest.mark.parametrize("secret_status, done", [(200, True), (404, True), (401, True), (403, True), (500, False)])
async def test_a_hangup_the_api_key_is_told_404_is_made_again_with_the_calls_own_secret(
        fake, settings, caplog, secret_status, done):
    """A call created with an ephemeral secret may be unknown to the API key (FACTS section 7). After the key's
    404 the call's own secret decides: hung up (200), or gone (404); a secret refused (401, 403) after the key
    was told the call does not exist would be refused again, so that is the end of it too. Any other failure
    is an error, for the caller to retry."""
    def handler(request):
        fake.requests.append(request)
        by_key = request.headers["Authorization"] == f"Bearer {settings.OPENAI_API_KEY}"
        status = 404 if by_key else secret_status
        return answer(status, {} if status == 200 else {"error": {"code": "call_id_not_found"}})

    fake.handler = handler
    if done:
        assert await upstream.hangup("rtc_secret", upstream.seal(SECRET)) is None
    else:
        with pytest.raises(upstream.UpstreamError) as failed:
            await upstream.hangup("rtc_secret", upstream.seal(SECRET))
        assert failed.value.http_status == 500
    assert [(r.url.path, r.headers["Authorization"]) for r in fake.requests] == [
        ("/v1/realtime/calls/rtc_secret/hangup", f"Bearer {settings.OPENAI_API_KEY}"),
        ("/v1/realtime/calls/rtc_secret/hangup", f"Bearer {SECRET}"),
    ]
    assert SECRET not in caplog.text


def test_detail_for_owner_team_admin_and_staff(csrf_client, alice, bob, staff):
    own = RealtimeSession.objects.create(
        user=bob, team=bob.memberships.get().team, model="gpt-realtime", voice="marin", turn_detection="server_vad",
        instructions="x",
    )
    Call.objects.create(session=own, number=1, call_id="rtc_bob1", sealed_secret=upstream.seal("ek_bob"))
    TranscriptEntry.objects.create(session=own, item_id="item_1", role="user", text="hello")
    from decimal import Decimal

    from sessions_app.pricing import TokenCounts

    own.record_usage("resp_tiny", TokenCounts(output_audio=1), Decimal("0.00000049"))
    for user in (bob, alice, staff):  # owner, team admin, staff
        login(csrf_client, user)
        response = csrf_client.get(f"/api/sessions/{own.pk}")
        assert response.status_code == 200, user
        data = response.json()
        assert data["transcript"][0]["text"] == "hello" and data["transcript"][0]["sources"] == []
        assert data["calls"][0]["call_id"] == "rtc_bob1"
        # Each record's cost as exactly as the totals give it (it was rounded to 6 places: $0.000000 here).
        assert data["usage"][0]["cost_usd"] == data["totals"]["cost_usd"] == "0.00000049"
        assert "ek_bob" not in response.content.decode() and "sealed" not in response.content.decode()


def test_detail_hidden_from_teammates_and_outsiders(csrf_client, session, bob, charlie):
    for user in (bob, charlie):
        login(csrf_client, user)
        assert csrf_client.get(f"/api/sessions/{session.pk}").status_code == 404


def test_wrong_methods_are_405(csrf_client, alice, session):
    login(csrf_client, alice)
    assert csrf_client.get(f"/api/sessions/{session.pk}/end").status_code == 405
    assert csrf_client.get(f"/api/sessions/{session.pk}/calls").status_code == 405
    assert post(csrf_client, f"/api/sessions/{session.pk}").status_code == 405


def test_the_old_call_endpoint_is_gone(csrf_client, alice, session):
    login(csrf_client, alice)
    assert post(csrf_client, f"/api/sessions/{session.pk}/call", {"call_id": "rtc_x"}).status_code == 404


def test_bad_and_unknown_ids_are_404(csrf_client, alice):
    login(csrf_client, alice)
    assert csrf_client.get("/api/sessions/not-a-uuid").status_code == 404
    assert csrf_client.get(f"/api/sessions/{uuid.uuid4()}").status_code == 404
    assert post(csrf_client, f"/api/sessions/{uuid.uuid4()}/end").status_code == 404
    assert post(csrf_client, f"/api/sessions/{uuid.uuid4()}/calls", {"sdp": OFFER}).status_code == 404


def test_anonymous_gets_401(csrf_client, session):
    assert csrf_client.get(f"/api/sessions/{session.pk}").status_code == 401
    assert post(csrf_client, f"/api/sessions/{session.pk}/end").status_code == 401
    assert resume(csrf_client, session).status_code == 401


def test_budget_statement_says_whose_budget_what_is_left_and_the_reserve(csrf_client, alice, settings):
    login(csrf_client, alice)
    settings.BUDGET_SESSION_RESERVE_USD = Decimal("0.05")
    assert csrf_client.get("/api/budget").json() == {"limited": False, "reserve_usd": "0.0500"}
    team = alice.memberships.get().team
    Budget.objects.create(team=team, monthly_limit_usd=Decimal("2"))
    Budget.objects.create(user=alice, monthly_limit_usd=Decimal("3"))
    # The budget that binds is the one with the least left: here the team's.
    assert csrf_client.get("/api/budget").json() == {
        "limited": True, "reserve_usd": "0.0500", "whose": "team", "team": "Demo",
        "limit_usd": "2.0000", "spent_usd": "0.0000", "remaining_usd": "2.0000",
    }
    page = csrf_client.get("/")
    assert b'"whose": "team"' in page.content and b"budget_remaining_usd" not in page.content


def test_budget_statement_needs_sign_in_and_get(csrf_client, alice):
    assert csrf_client.get("/api/budget").json()["error"]["code"] == "not_authenticated"
    login(csrf_client, alice)
    assert csrf_client.post("/api/budget").status_code == 405


@pytest.mark.parametrize("mode, shown", [("simulator", True), ("openai", False)])
def test_the_voice_page_says_when_the_upstream_is_the_simulator(csrf_client, alice, settings, mode, shown):
    settings.UPSTREAM_MODE = mode
    login(csrf_client, alice)
    page = " ".join(csrf_client.get("/").content.decode().split())
    assert ('id="upstream-note"' in page) is shown
    assert ("local realtime simulator, not to OpenAI" in page) is shown
