"""Faults and hostile input: every answer under /api/ is the contract's JSON, nothing is a 5xx, nothing
half-written, and the deployable settings pass Django's own checks. Runs on SQLite, and again on PostgreSQL."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.core.cache import cache
from django.test import Client

from sessions_app import upstream, views
from sessions_app.models import Budget, ModelPrice, RealtimeSession, TranscriptEntry, TranscriptionPrice
from tests.conftest import PASSWORD, login
from tests.upstream_fake import OFFER, FakeUpstream

ROOT = Path(__file__).resolve().parents[1]
DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
def fake(monkeypatch, settings):
    settings.OPENAI_API_KEY = "sk-test-FAKE-hardening"
    cache.clear()
    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    return fake


def api_error(response, status, code=None):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    error = response.json()["error"]
    assert error["message"] and (code is None or error["code"] == code)
    return error


# ---- JSON everywhere under /api/ ----

@pytest.mark.django_db
def test_api_errors_are_json_404_405_413_and_500(csrf_client, alice, monkeypatch, settings, fake):
    login(csrf_client, alice)
    api_error(csrf_client.get("/api/sessions/00000000-0000-0000-0000-000000000000"), 404, "not_found")
    api_error(csrf_client.get("/api/no/such/thing"), 404, "not_found")
    api_error(csrf_client.get("/api/sessions/"), 405, "method_not_allowed")
    assert "POST" in csrf_client.get("/api/sessions/")["Allow"]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    api_error(csrf_client.post("/api/sessions/", data="x" * 5000, content_type="application/json"), 413,
              "request_too_large")
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 13 * 1024 * 1024

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "session_payload", broken)
    session = RealtimeSession.objects.create(user=alice, model="gpt-realtime", voice="marin",
                                             turn_detection="server_vad", instructions="x")
    error = api_error(csrf_client.get(f"/api/sessions/{session.pk}"), 500, "server_error")
    assert "a bug" not in error["message"]


@pytest.mark.django_db
def test_the_admin_answers_ids_and_dates_that_cannot_exist_with_a_400(admin_client, alice):
    """Stock admin pages 500ed on a bulk action naming a row that is no id, and on the date drill-down's
    last day of year 9999 (the day after it overflows)."""
    session = RealtimeSession.objects.create(user=alice, model="gpt-realtime", voice="marin",
                                             turn_detection="server_vad", instructions="x")
    sessions = "/admin/sessions_app/realtimesession/"
    for selected in (["notauuid"], [str(session.pk), "notauuid"]):
        refused = admin_client.post(sessions, {"action": "delete_selected", "_selected_action": selected})
        assert refused.status_code == 400 and b"cannot exist" in refused.content
    assert RealtimeSession.objects.filter(pk=session.pk).exists()
    team = alice.memberships.get().team
    asked = admin_client.post("/admin/teams_app/team/",
                              {"action": "delete_selected", "_selected_action": [str(team.pk)]})
    assert asked.status_code == 200 and b"Are you sure" in asked.content  # a real id: the confirmation
    refused = admin_client.post("/admin/sessions_app/usagerecord/",
                                {"action": "delete_selected", "_selected_action": ["notanint"]})
    assert refused.status_code == 400
    for model in ("auth/user", "auth/group", "teams_app/team", "documents_app/document"):
        assert admin_client.post(f"/admin/{model}/", {"action": "delete_selected",
                                                       "_selected_action": ["x"]}).status_code == 400
    last_day = admin_client.get(f"{sessions}?created_at__year=9999&created_at__month=12&created_at__day=31")
    assert last_day.status_code == 400
    for url in (f"{sessions}?created_at__year=9999", "/admin/sessions_app/usagerecord/?created_at__year=0",
                "/admin/teams_app/team/?created_at__year=-1"):
        assert admin_client.get(url).status_code == 400, url
    # A form sent back with a choice that is no id, or one too large for the database (its widget looked
    # them up as the page rendered): 400, nothing stored.
    for chosen in ({"user": "99999999999999999999"}, {"team": "notauuid"}):
        sent = admin_client.post("/admin/sessions_app/budget/add/", {**chosen, "monthly_limit_usd": "5"})
        assert sent.status_code in (200, 400) and b"Traceback" not in sent.content
    assert not Budget.objects.exists()
    shown = admin_client.post("/admin/sessions_app/budget/add/", {"monthly_limit_usd": "-1"})
    assert shown.status_code == 200  # an ordinary invalid form is shown again with its errors
    assert admin_client.get(f"{sessions}?created_at__year=2026&created_at__month=12").status_code == 200


@pytest.mark.django_db
def test_conversations_and_usage_records_cannot_be_deleted_in_the_admin(admin_client, alice):
    """Both could be: the running totals then kept spend the records no longer showed (rebuild_spend --fix
    would have erased it), and a person whose conversations were gone could be deleted with their totals."""
    from sessions_app.models import UsageRecord

    session = RealtimeSession.objects.create(user=alice, model="gpt-realtime", voice="marin",
                                             turn_detection="server_vad", instructions="x")
    record = UsageRecord.objects.create(session=session, response_id="resp_kept", cost_usd="0.01")
    for path, pk in (("realtimesession", session.pk), ("usagerecord", record.pk)):
        assert admin_client.post(f"/admin/sessions_app/{path}/{pk}/delete/", {"post": "yes"}).status_code == 403
        listed = admin_client.post(f"/admin/sessions_app/{path}/", {"action": "delete_selected",
                                                                     "_selected_action": [str(pk)]})
        assert b"Are you sure" not in listed.content
    assert RealtimeSession.objects.filter(pk=session.pk).exists() and UsageRecord.objects.filter(pk=record.pk).exists()


@pytest.mark.django_db
def test_the_admin_refuses_a_price_below_zero(admin_client):
    """A negative price was stored, and would have taken money off every bill it priced."""
    fields = {"model": "gpt-cheap", "text_input": "1", "text_cached_input": "0.1", "text_output": "2",
              "audio_input": "3", "audio_cached_input": "0.3", "audio_output": "4", "image_input": "0",
              "image_cached_input": "0", "context_window": "32000", "max_output_tokens": "4096"}
    shown = admin_client.post("/admin/sessions_app/modelprice/add/", {**fields, "text_input": "-5"})
    assert shown.status_code == 200 and b"greater than or equal to 0" in shown.content
    assert not ModelPrice.objects.filter(model="gpt-cheap").exists()
    assert admin_client.post("/admin/sessions_app/modelprice/add/", fields).status_code == 302
    transcription = {"model": "whisper-cheap", "text_input": "0", "audio_input": "0", "text_output": "0"}
    shown = admin_client.post("/admin/sessions_app/transcriptionprice/add/", {**transcription, "per_minute": "-1"})
    assert shown.status_code == 200 and not TranscriptionPrice.objects.filter(model="whisper-cheap").exists()


@pytest.mark.django_db
def test_json_nested_thousands_deep_is_a_400(csrf_client, alice, fake):
    login(csrf_client, alice)
    api_error(csrf_client.post("/api/sessions/", data=DEEP, content_type="application/json"), 400)
    session = RealtimeSession.objects.create(user=alice, model="gpt-realtime", voice="marin",
                                             turn_detection="server_vad", instructions="x")
    api_error(csrf_client.post(f"/api/sessions/{session.pk}/calls", data=DEEP, content_type="application/json"), 400)
    assert fake.requests == []


@pytest.mark.django_db
def test_a_form_body_where_json_is_read_is_a_400(csrf_client, alice, fake):
    """The CSRF check reads a POST's form; a multipart body, well formed or not, was a 500 (the view could
    no longer read the body, or the form's parser refused a missing boundary)."""
    login(csrf_client, alice)
    session = RealtimeSession.objects.create(user=alice, model="gpt-realtime", voice="marin",
                                             turn_detection="server_vad", instructions="x")
    for path in ("/api/sessions/", f"/api/sessions/{session.pk}/calls", f"/api/sessions/{session.pk}/end"):
        api_error(csrf_client.post(path, data=b"garbage", content_type="multipart/form-data"), 400, "invalid_request")
    for path in ("/api/sessions/", f"/api/sessions/{session.pk}/calls"):  # (End reads no body)
        api_error(csrf_client.post(path, {"sdp": OFFER}), 400, "invalid_request")  # well-formed multipart
    assert fake.requests == [] and RealtimeSession.objects.count() == 1
    assert not session.calls.exists() and RealtimeSession.objects.get().status == "active"


@pytest.mark.django_db
def test_pasted_text_of_one_long_run_is_a_clear_400(csrf_client, alice, fake):
    """A million characters with no whitespace reached the tokenizer whole, which refused it: a 500."""
    login(csrf_client, alice)
    body = json.dumps({"sdp": OFFER, "document_text": "a" * 1_000_000})
    error = api_error(csrf_client.post("/api/sessions/", data=body, content_type="application/json"), 400)
    assert "Paste less, or upload it to the library" in error["message"]
    assert fake.requests == [] and not RealtimeSession.objects.exists()


@pytest.mark.django_db
def test_nul_and_lone_surrogates_in_pasted_text_are_cleaned(csrf_client, alice, fake):
    login(csrf_client, alice)
    body = json.dumps({"sdp": OFFER, "document_text": "Launch\x00 in March \ud800 now."})
    response = csrf_client.post("/api/sessions/", data=body, content_type="application/json")
    assert response.status_code == 201, response.content
    assert RealtimeSession.objects.get().pasted_text == "Launch in March \ufffd now."


@pytest.mark.django_db
def test_a_search_for_nul_is_fine(csrf_client, bob):
    login(csrf_client, bob)
    assert csrf_client.get("/api/documents/?q=%00").status_code == 200
    assert csrf_client.get("/documents/?q=%00%ED%A0%80").status_code == 200


# ---- sockets ----

def socket_app():
    from channels.auth import AuthMiddlewareStack
    from channels.routing import URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator

    from sessions_app.routing import websocket_urlpatterns

    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("path", ["/ws/nothing/", "/ws/sessions/not-a-uuid/", "/", "/ws/sessions/"])
async def test_an_unrouted_socket_path_is_refused_not_a_500(path):
    comm = WebsocketCommunicator(socket_app(), path, headers=[(b"origin", b"http://127.0.0.1:8000")])
    connected, code = await comm.connect()
    assert not connected
    await comm.disconnect()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
async def test_hostile_frames_get_error_frames_and_the_socket_stays_up(alice):
    from channels.db import database_sync_to_async

    from tests.test_usage_consumer import USAGE, connect, session_for

    session = await session_for(alice)
    comm, connected = await connect(session, alice)
    assert connected
    for frame, code in [
        (DEEP, "invalid_json"),
        (json.dumps({"type": "usage.report", "response_id": "resp_1\n", "usage": USAGE}), "invalid_response_id"),
        (json.dumps({"type": "transcript.report", "item_id": "item_1\n", "role": "user", "text": "x"}),
         "invalid_item_id"),
    ]:
        await comm.send_to(text_data=frame)
        reply = await comm.receive_json_from()
        assert reply["type"] == "error" and reply["code"] == code, reply
    await comm.send_json_to({"type": "transcript.report", "item_id": "item_2", "role": "user",
                             "text": "Hello\x00 there \ud800"})
    assert (await comm.receive_json_from())["type"] == "transcript.ack"
    stored = await database_sync_to_async(TranscriptEntry.objects.get)(item_id="item_2")
    assert stored.text == "Hello there \ufffd"
    await comm.disconnect()


# ---- static files ----

@pytest.mark.parametrize("path", ["/static/%2e%2e/manage.py", "/static/../manage.py", "/static/..%2fmanage.py",
                                  "/static/css/%00.css"])
async def test_static_paths_that_climb_out_are_404(path):
    from voiceproject.asgi import StaticFiles, django_asgi_app

    comm = HttpCommunicator(StaticFiles(django_asgi_app), "GET", path)
    response = await comm.get_response()
    assert response["status"] in (400, 404), response["status"]


async def test_static_files_carry_the_security_headers():
    from voiceproject.asgi import StaticFiles, django_asgi_app

    comm = HttpCommunicator(StaticFiles(django_asgi_app), "GET", "/static/css/app.css")
    await comm.send_input({"type": "http.request", "body": b""})
    response = await comm.receive_output(5)  # the start of a streamed file: status and headers
    headers = {k.decode().lower(): v.decode() for k, v in response["headers"]}
    assert response["status"] == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "same-origin"


@pytest.mark.django_db
def test_pages_carry_the_content_security_policy(client, alice):
    for path in ("/accounts/login/", "/healthz"):
        response = client.get(path)
        assert "default-src 'self'" in response["Content-Security-Policy"] and "'unsafe-inline'" not in \
            response["Content-Security-Policy"]
        assert response["X-Frame-Options"] == "DENY"


# ---- a body that never arrives ----

async def test_a_body_that_stops_arriving_gets_408():
    from voiceproject.asgi import BoundedBodyWait

    async def app(scope, receive, send):
        while True:  # as Django does: read the body to the end
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "POST", "path": "/documents/upload", "headers": [(b"content-length", b"100000")]}
    comm = ApplicationCommunicator(BoundedBodyWait(app, 1), scope)
    await comm.send_input({"type": "http.request", "body": b"x" * 10, "more_body": True})
    started = asyncio.get_running_loop().time()
    response = await comm.receive_output(5)
    assert response["status"] == 408
    assert 0.9 < asyncio.get_running_loop().time() - started < 3
    # A body that does arrive is untouched.
    comm = ApplicationCommunicator(BoundedBodyWait(app, 1), scope)
    await comm.send_input({"type": "http.request", "body": b"x", "more_body": True})
    await comm.send_input({"type": "http.request", "body": b"y", "more_body": False})
    assert (await comm.receive_output(5))["status"] == 200


# ---- sign-in throttling ----

@pytest.mark.django_db
def test_failed_sign_ins_are_throttled_per_user_and_the_right_user_gets_back_in(alice, settings):
    settings.LOGIN_FAILURES_PER_USER = "3/5m"
    cache.clear()
    client = Client()
    for _ in range(3):
        assert client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code == 200
    throttled = client.post("/accounts/login/", {"username": "Alice", "password": PASSWORD})
    assert throttled.status_code == 429 and "Too many failed sign-ins" in throttled.content.decode()
    assert int(throttled["Retry-After"]) > 0
    assert 'value="Alice"' in throttled.content.decode()  # the name typed is kept in the form
    # Another user is not locked out by alice's failures.
    assert Client().post("/accounts/login/", {"username": "bob", "password": "wrong"}).status_code == 200
    cache.clear()  # the window passed
    assert client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}).status_code == 302


@pytest.mark.django_db
def test_failed_sign_ins_are_throttled_per_address(alice, settings):
    settings.LOGIN_FAILURES_PER_ADDRESS = "4/5m"
    cache.clear()
    client = Client()
    for name in ("x1", "x2", "x3", "x4"):
        client.post("/accounts/login/", {"username": name, "password": "wrong"})
    assert client.post("/accounts/login/", {"username": "x5", "password": "wrong"}).status_code == 429
    cache.clear()


# ---- Redis away ----

@pytest.mark.django_db
def test_with_the_cache_away_starting_still_works_and_is_limited_per_process(csrf_client, alice, fake, settings):
    settings.CACHES = {
        "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0",
                    "OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1}},
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "fallback-test"},
    }
    settings.MINT_RATE_LIMIT = "2/m"
    from django.core.cache import caches

    caches["local"].clear()
    login(csrf_client, alice)
    mint = lambda: csrf_client.post("/api/sessions/", data=json.dumps({"sdp": OFFER}), content_type="application/json")
    assert mint().status_code == 201 and mint().status_code == 201
    api_error(mint(), 429, "rate_limited")


def test_deploy_checks_pass_with_production_settings():
    env = {
        **os.environ, "SECRET_KEY": "x" * 20 + "production-like-secret-key-of-enough-length-and-variety-9f8e7d6c",
        "DEBUG": "0", "ALLOWED_HOSTS": "voice.example.com", "SECURE_SSL_REDIRECT": "1", "SECURE_COOKIES": "1",
        "SECURE_HSTS_SECONDS": "31536000", "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1", "SECURE_HSTS_PRELOAD": "1",
        "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto", "DATABASE_URL": "", "REDIS_URL": "",
    }
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    # And the checks still see a missing protection: the middleware subclasses do not hide them.
    env["SECURE_HSTS_SECONDS"] = "0"
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "security.W004" in result.stdout + result.stderr


# ---- a browser that goes away while its call is being created ----

@pytest.mark.django_db(transaction=True, serialized_rollback=True)
async def test_a_start_whose_browser_went_away_still_records_its_call(alice, monkeypatch, settings):
    """Django cancels a view whose client disconnected. The call created upstream meanwhile must still be on
    the record (where the sweep ends a conversation whose page never came), not left running unknown."""
    from channels.db import database_sync_to_async

    from sessions_app.models import Call
    from voiceproject.asgi import django_asgi_app

    settings.OPENAI_API_KEY = "sk-test-FAKE-hardening"
    await database_sync_to_async(cache.clear)()
    fake, asked, release = FakeUpstream(), asyncio.Event(), asyncio.Event()

    async def slow_calls(url, headers, body):
        if url.endswith("/v1/realtime/calls"):
            asked.set()  # upstream, the call exists from here on
            await release.wait()
        return await fake.send(url, headers, body)

    monkeypatch.setattr(upstream, "_send", slow_calls)

    def signed_in():
        client = Client()
        client.force_login(alice)
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    token = "t" * 32
    cookie = f"{settings.SESSION_COOKIE_NAME}={await database_sync_to_async(signed_in)()}; csrftoken={token}"
    body = json.dumps({"sdp": OFFER}).encode()
    scope = {"type": "http", "method": "POST", "path": "/api/sessions/", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"cookie", cookie.encode()), (b"x-csrftoken", token.encode()),
                         (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000)}
    comm = ApplicationCommunicator(django_asgi_app, scope)
    await comm.send_input({"type": "http.request", "body": body, "more_body": False})
    await asyncio.wait_for(asked.wait(), 10)
    await comm.send_input({"type": "http.disconnect"})
    await asyncio.sleep(0.2)  # Django has cancelled the view by now
    release.set()
    for _ in range(100):
        if await Call.objects.filter(session__user=alice).aexists():
            break
        await asyncio.sleep(0.05)
    call = await Call.objects.select_related("session").aget(session__user=alice)
    assert call.call_id and call.session.status == "active"
    await comm.wait(5)


def test_an_error_report_shows_no_ephemeral_secret(alice, monkeypatch, settings, fake):
    """Django's error report (the DEBUG page, an e-mailed report, a tracker reading frame variables) lists
    each frame's variables: the call's secret, held by the start's functions, is shown masked."""
    import sys

    from django.test import RequestFactory
    from django.views.debug import ExceptionReporter

    from tests.upstream_fake import SECRET

    async def refused(*args, **kwargs):
        raise RuntimeError("the call could not be made")

    monkeypatch.setattr(upstream, "create_call", refused)
    try:
        asyncio.run(views._create_call(alice, {"instructions": "x"}, OFFER))
    except RuntimeError:
        report = ExceptionReporter(RequestFactory().post("/api/sessions/"), *sys.exc_info())
    product = [f for f in report.get_traceback_frames() if "/sessions_app/" in f["filename"]]
    assert [f["function"] for f in product] == ["_create_call"]
    shown = dict(product[0]["vars"])
    assert "secret" in shown and SECRET not in repr(shown)  # masked, as Django masks sensitive variables
