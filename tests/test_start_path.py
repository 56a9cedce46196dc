"""The start path's cost: a fixed, small number of queries, one for the budgets however many apply, and
request threads that keep their database connection from one request to the next."""

import asyncio
import datetime
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sessions_app import upstream
from sessions_app.models import Budget
from tests.conftest import login
from tests.test_budgets import spend
from tests.upstream_fake import OFFER, FakeUpstream


@pytest.fixture
def fake(monkeypatch, settings):
    settings.MINT_RATE_LIMIT = "1000/m"
    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    return fake


def count_trips(monkeypatch):
    """The names of the functions sent to a thread (sync_to_async) from now on, in order."""
    from asgiref.sync import SyncToAsync

    trips = []
    real = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        trips.append(getattr(self.func, "__name__", ""))
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    return trips


@pytest.fixture
def asgi_app():
    """The server's Django ASGI handler; the connections its request threads kept are closed after."""
    from voiceproject.asgi import django_asgi_app

    yield django_asgi_app
    for thread in django_asgi_app.idle_threads:
        thread.submit(_close_connections).result()


def start_queries(client):
    with CaptureQueriesContext(connection) as captured:
        response = client.post("/api/sessions/", data=json.dumps({"sdp": OFFER}), content_type="application/json")
    assert response.status_code == 201, response.content
    return [q["sql"] for q in captured.captured_queries]


def test_a_start_reads_the_user_membership_budgets_and_price_once_then_writes_two_rows(csrf_client, bob, fake):
    login(csrf_client, bob)
    start_queries(csrf_client)  # the first request of a session caches it
    queries = start_queries(csrf_client)
    reads = [q for q in queries if q.startswith("SELECT")]
    writes = [q for q in queries if q.startswith("INSERT")]
    tables = [q.rsplit(" FROM ", 1)[1].split()[0].strip('"') for q in reads]
    # The last read: whether this person already has a conversation running (one at a time).
    assert tables == [
        "auth_user", "teams_app_membership", "sessions_app_budget", "sessions_app_modelprice",
        "sessions_app_realtimesession"]
    assert [q.split()[2].strip('"') for q in writes] == ["sessions_app_realtimesession", "sessions_app_call"]


def test_a_start_goes_to_a_thread_twice_once_before_the_upstream_and_once_after(csrf_client, bob, fake, monkeypatch):
    """Reading the user and the start's own reads share one trip; saving the conversation is the other."""
    login(csrf_client, bob)
    start_queries(csrf_client)
    trips = count_trips(monkeypatch)
    start_queries(csrf_client)
    ours = {"sign_in", "get_user", "_mint_preflight", "_new_session"}
    assert [name for name in trips if name in ours] == ["sign_in", "_new_session"]


def test_budgets_cost_one_query_however_many_apply(csrf_client, bob, fake):
    login(csrf_client, bob)
    start_queries(csrf_client)
    without = len(start_queries(csrf_client))
    Budget.objects.create(user=bob, monthly_limit_usd=50)
    Budget.objects.create(team=bob.memberships.get().team, monthly_limit_usd=80)
    assert len(start_queries(csrf_client)) == without


def test_room_is_each_budgets_limit_less_its_month_as_spent_sums_it(alice, bob):
    team = bob.memberships.get().team
    mine = Budget.objects.create(user=bob, monthly_limit_usd=Decimal("5"))
    ours = Budget.objects.create(team=team, monthly_limit_usd=Decimal("3"))
    assert Budget.room_for(bob, team) == Decimal("3")
    spend(bob, "1.25000001")
    spend(alice, "0.5")
    last_month = timezone.now().replace(day=1) - datetime.timedelta(days=2)
    spend(bob, "9", when=last_month)
    assert mine.remaining() == Decimal("3.74999999") and ours.remaining() == Decimal("1.24999999")
    assert Budget.room_for(bob, team) == min(mine.remaining(), ours.remaining())
    assert Budget.room_for(bob, None) == mine.remaining()
    assert Budget.room_for(alice, team) == ours.remaining()
    mine.delete(), ours.delete()
    assert Budget.room_for(bob, team) is None


async def _request(app, method, path, body=b"", headers=()):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode()), *headers],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    sent = []

    async def receive():
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect: Django stops listening once it has answered

    statuses = []

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def _get(app, path):
    return await _request(app, "GET", path)


@pytest.mark.django_db
async def test_request_threads_keep_their_database_connection(asgi_app):
    opened = []

    def count(sender, connection, **kwargs):
        opened.append(connection.alias)

    connection_created.connect(count)
    try:
        for _ in range(5):  # one after another: each borrows the thread the one before gave back
            assert await _get(asgi_app, "/healthz") == 200
        assert opened == ["default"]
        statuses = await asyncio.gather(*(_get(asgi_app, "/healthz") for _ in range(3)))
        assert statuses == [200, 200, 200]
        assert len(opened) <= 3  # side by side: a thread (and a connection) each, kept for the next ones
    finally:
        connection_created.disconnect(count)


def _close_connections():
    from django.db import connections

    connections.close_all()


def test_the_server_process_keeps_what_it_loaded_out_of_full_collections():
    # A full collection walked every object of Django and the apps (20-40 ms with every request of the
    # process waiting); frozen at startup, they are skipped. A fresh interpreter, as the server starts.
    script = "import gc, voiceproject.asgi; print(gc.get_freeze_count())"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DJANGO_SETTINGS_MODULE": "voiceproject.settings"})
    assert result.returncode == 0, result.stderr
    # Django and the apps (about 100,000 objects), not a handful.
    assert int(result.stdout.strip().splitlines()[-1]) > 50_000


async def test_requests_still_go_out_with_more_sidebands_open_than_aiohttp_allows_by_default(settings):
    """Every running call's sideband holds one of the upstream session's connections for its whole life:
    past aiohttp's default cap (100) the next sideband, and every mint and hangup, would wait for one."""
    from aiohttp import web

    async def socket(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    async def hangup(request):
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/realtime", socket)
    app.router.add_post("/v1/realtime/calls/{call}/hangup", hangup)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{runner.addresses[0][1]}"
    settings.OPENAI_API_KEY = "sk-test-not-real"
    sidebands = []
    try:
        for n in range(110):
            sidebands.append(await upstream._session().ws_connect(upstream.sideband_url(f"rtc_{n}")))
        await asyncio.wait_for(upstream.hangup("rtc_0"), timeout=5)
    finally:
        for ws in sidebands:
            await ws.close()
        await upstream.close()
        await runner.cleanup()


@pytest.mark.django_db
async def test_a_request_goes_to_its_thread_for_its_work_and_its_end_only(asgi_app, monkeypatch):
    """Django's request_started receivers took every request to its thread and back for them alone; their
    work is done at request_finished, on the request's thread, which leaves the connection it keeps to
    be health-checked at its next use."""
    from voiceproject.asgi import drop_request_started_receivers

    # The server's process has none from its start (a fresh interpreter, as the server starts); this one
    # may have had them connected again by an earlier test's test client.
    script = ("import voiceproject.asgi; from django.core.signals import request_started; "
              "print(len(request_started.receivers))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DJANGO_SETTINGS_MODULE": "voiceproject.settings"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0"
    drop_request_started_receivers()
    trips = count_trips(monkeypatch)
    assert await _get(asgi_app, "/healthz") == 200
    assert "sync_send" not in trips, trips  # a signal's sync receivers
    assert trips.count("close") == 1, trips  # the response's close: request_finished, on the thread

    def kept():
        from django.db import connection

        return connection.connection is not None, connection.health_check_done

    assert asgi_app.idle_threads[-1].submit(kept).result() == (True, False)


@pytest.mark.django_db
async def test_csrf_is_checked_on_the_loop_and_a_forms_body_on_a_thread(asgi_app, monkeypatch):
    """The CSRF hook runs on the loop (no trip) but for a form's body, which it parses on a thread; it
    refuses a POST without the token either way, and lets one with it through."""
    trips = count_trips(monkeypatch)
    delete = f"/documents/{uuid.uuid4()}/delete"
    as_json = [(b"content-type", b"application/json")]
    assert await _request(asgi_app, "POST", delete, b"{}", as_json) == 403
    assert "process_view" not in trips, trips
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    assert await _request(asgi_app, "POST", delete, b"confirm=1", form) == 403
    assert "process_view" in trips, trips
    token = "a" * 32
    with_token = as_json + [(b"cookie", f"csrftoken={token}".encode()), (b"x-csrftoken", token.encode())]
    assert await _request(asgi_app, "POST", delete, b"{}", with_token) == 302  # on to the sign-in
