"""The usage WebSocket: auth, origin, idempotency, bad frames."""

import asyncio
from decimal import Decimal

import pytest
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from sessions_app.consumers import ALL_TEAMS_GROUP
from sessions_app.models import Call, RealtimeSession, TranscriptEntry, UsageRecord
from sessions_app.routing import websocket_urlpatterns

# Transactional: the consumer works on other threads. serialized_rollback keeps
# the price table that a data migration seeds.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

USAGE = {
    "total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
    "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "image_tokens": 0, "cached_tokens": 64,
                            "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0}},
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
}


def make_app():
    # Built per test: the origin validator reads ALLOWED_HOSTS when constructed.
    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


@database_sync_to_async
def session_for(user, model="gpt-realtime"):
    return RealtimeSession.objects.create(user=user, model=model, voice="marin", turn_detection="server_vad",
                                          instructions="x")


@database_sync_to_async
def cookie_for(user):
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


async def connect(session, user=None, origin="http://127.0.0.1:8000", query=""):
    headers = [(b"origin", origin.encode())]
    if user is not None:
        headers.append((b"cookie", (await cookie_for(user)).encode()))
    comm = WebsocketCommunicator(make_app(), f"/ws/sessions/{session.pk}/{query}", headers=headers)
    connected, _ = await comm.connect()
    if connected:
        # A page that connects first hears where the conversation stands.
        hello = await comm.receive_json_from()
        assert hello["type"] == "session.totals", hello
    return comm, connected


async def test_owner_reports_usage_and_gets_totals(alice):
    session = await session_for(alice)
    comm, connected = await connect(session, alice)
    assert connected
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_1", "usage": USAGE})
    ack = await comm.receive_json_from()
    assert ack["type"] == "usage.ack" and ack["response_id"] == "resp_1" and ack["duplicate"] is False
    assert ack["cost_usd"] == "0.00696560"  # exact: the page rounds it as the server pages do
    assert ack["session"]["input_tokens"] == 132 and ack["session"]["output_tokens"] == 121
    assert ack["session"]["cost_usd"] == "0.00696560"
    await session.arefresh_from_db()
    assert session.cost_usd == Decimal("0.0069656") and session.response_count == 1
    await comm.disconnect()


async def test_a_resent_report_is_stored_once(alice):
    session = await session_for(alice)
    comm, _ = await connect(session, alice)
    for _ in range(3):
        await comm.send_json_to({"type": "usage.report", "response_id": "resp_dup", "usage": USAGE})
    acks = [await comm.receive_json_from() for _ in range(3)]
    assert [a.get("duplicate") for a in acks] == [False, True, True], acks
    assert all(a["session"]["cost_usd"] == "0.00696560" for a in acks)
    # After a reconnect the same report is still a duplicate.
    await comm.disconnect()
    comm, _ = await connect(session, alice)
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_dup", "usage": USAGE})
    assert (await comm.receive_json_from())["duplicate"] is True
    assert await UsageRecord.objects.filter(session=session).acount() == 1
    await session.arefresh_from_db()
    assert session.response_count == 1 and session.input_tokens == 132
    await comm.disconnect()


async def test_anonymous_is_refused(alice):
    session = await session_for(alice)
    comm, connected = await connect(session, None)
    assert not connected


async def test_another_users_session_is_refused(alice, charlie, bob):
    session = await session_for(alice)
    for intruder in (charlie, bob):
        comm, connected = await connect(session, intruder)
        assert not connected


async def test_foreign_origin_is_refused(alice):
    session = await session_for(alice)
    comm, connected = await connect(session, alice, origin="http://evil.example")
    assert not connected


async def test_unknown_session_is_refused(alice):
    session = await session_for(alice)
    pk = session.pk
    await session.adelete()
    session.pk = pk
    comm, connected = await connect(session, alice)
    assert not connected


@pytest.mark.parametrize(
    "frame, code",
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"type": "usage.delete"}', "unknown_type"),
        ('{"type": "usage.report", "usage": {}}', "invalid_response_id"),
        ('{"type": "usage.report", "response_id": "a b<script>", "usage": {}}', "invalid_response_id"),
        ('{"type": "usage.report", "response_id": "r1", "usage": {"input_tokens": -5}}', "invalid_usage"),
        ('{"type": "usage.report", "response_id": "r1", "usage": {"input_tokens": "many"}}', "invalid_usage"),
        ('{"type": "usage.report", "response_id": "r1", "usage": {"output_token_details": {"audio_tokens": 99999999}}}',
         "invalid_usage"),
        ('{"type": "usage.report", "response_id": "r1"}', "invalid_usage"),
        # Too large for a float: once an OverflowError that closed the socket (and failed its batch).
        ('{"type": "usage.report", "item_id": "item_1", "usage": {"type": "duration", "seconds": 1%s}}' % ("0" * 400),
         "invalid_usage"),
        ('{"type": "transcript.report", "item_id": "i1", "role": "system", "text": "x"}', "invalid_role"),
        ('{"type": "transcript.report", "item_id": "i1", "role": "user", "text": 5}', "invalid_text"),
        ("x" * 70_000, "frame_too_large"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_up(alice, frame, code):
    session = await session_for(alice)
    comm, _ = await connect(session, alice)
    await comm.send_to(text_data=frame)
    error = await comm.receive_json_from()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert await UsageRecord.objects.acount() == 0
    assert await TranscriptEntry.objects.acount() == 0
    # Still connected: a good report goes through.
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_ok", "usage": USAGE})
    assert (await comm.receive_json_from())["type"] == "usage.ack"
    await comm.disconnect()


async def test_binary_frames_are_refused(alice):
    session = await session_for(alice)
    comm, _ = await connect(session, alice)
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await comm.receive_json_from())["code"] == "invalid_frame"
    await comm.disconnect()


async def test_transcript_entries_are_stored_once(alice):
    session = await session_for(alice)
    comm, _ = await connect(session, alice)
    for text in ("Hello there", "changed"):
        await comm.send_json_to({"type": "transcript.report", "item_id": "item_1", "role": "assistant", "text": text})
        assert (await comm.receive_json_from()) == {"type": "transcript.ack", "item_id": "item_1"}
    entries = [e async for e in TranscriptEntry.objects.filter(session=session)]
    assert [(e.role, e.text) for e in entries] == [("assistant", "Hello there")]
    await comm.disconnect()


async def dashboard_listener():
    """A channel in every team's dashboard group, as a staff dashboard's socket is: (layer, channel)."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(ALL_TEAMS_GROUP, channel)
    return layer, channel


async def test_recorded_usage_reaches_the_dashboard_group(alice):
    session = await session_for(alice)
    layer, channel = await dashboard_listener()
    comm, _ = await connect(session, alice)
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_d", "usage": USAGE})
    await comm.receive_json_from()
    event = await layer.receive(channel)
    assert event["type"] == "spend.batch"
    (update,) = event["updates"]
    assert update["type"] == "spend.update" and update["session_id"] == str(session.pk)
    (change,) = update["changes"]
    assert change["cost_usd"] == "0.00696560" and change["responses"] == 1 and change["sessions"] == 1
    assert update["session_row"]["cost_usd"] == "0.00696560" and update["user"] == "alice"
    await comm.disconnect()


async def test_a_page_report_after_the_verified_one_still_updates_the_dashboard_row(alice):
    """The server's record is the bill, so the page's report of the same answer changes no day; it still
    changes the conversation's row (what was reported, and here a disagreement), so the dashboards hear it."""
    from sessions_app import usage as recording

    session = await session_for(alice)
    layer, channel = await dashboard_listener()
    under = {**USAGE, "output_tokens": 120, "total_tokens": 252,
             "output_token_details": {"text_tokens": 29, "audio_tokens": 91}}
    verified = await database_sync_to_async(recording.record)(session.pk, "resp_v", USAGE, source=UsageRecord.SERVER)
    assert verified.update["changes"] and verified.update["session_row"]["reported_session_cost_usd"] == "0.00000000"
    comm, _ = await connect(session, alice)
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_v", "usage": under})
    assert (await comm.receive_json_from())["type"] == "usage.ack"
    (update,) = (await layer.receive(channel))["updates"]
    assert update["response_id"] == "resp_v" and not update["verified"] and update["changes"] == []
    assert update["session_row"]["mismatch"] is True and update["session_row"]["reported_session_cost_usd"] != "0.00000000"
    assert update["session_row"]["cost_usd"] == verified.update["session_row"]["cost_usd"]  # the bill is unchanged
    await comm.disconnect()


async def test_a_page_gone_by_its_ack_does_not_take_the_dashboard_update_with_it(alice, monkeypatch):
    """The page may close on an earlier ack, or the ack's send fail under load: the report is stored,
    so the dashboards still hear of it."""
    from sessions_app.consumers import SessionUsageConsumer

    sent = SessionUsageConsumer.send_json

    async def closed_on_ack(self, content, close=False):
        if content.get("type") == "usage.ack":
            raise ConnectionResetError("the page has gone")
        await sent(self, content, close)

    monkeypatch.setattr(SessionUsageConsumer, "send_json", closed_on_ack)
    session = await session_for(alice)
    layer, channel = await dashboard_listener()
    comm, _ = await connect(session, alice)
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_gone", "usage": USAGE})
    event = await asyncio.wait_for(layer.receive(channel), 2)
    assert [u["response_id"] for u in event["updates"]] == ["resp_gone"]
    assert await UsageRecord.objects.filter(session=session, response_id="resp_gone").aexists()
    with pytest.raises(ConnectionResetError):  # the consumer ends with its socket, as a real one does
        await comm.wait(2)


async def test_budget_exceeded_group_event_reaches_the_page(alice):
    session = await session_for(alice)
    comm, _ = await connect(session, alice)
    await get_channel_layer().group_send(f"session-{session.pk}", {"type": "budget.exceeded", "message": "cap"})
    assert await comm.receive_json_from() == {"type": "budget.exceeded", "message": "cap"}
    await comm.disconnect()


async def test_crossing_the_budget_ends_every_running_session_and_hangs_up(alice, monkeypatch):
    from sessions_app import upstream
    from sessions_app.models import Budget
    from tests.upstream_fake import FakeUpstream

    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    budget = await Budget.objects.acreate(user=alice, monthly_limit_usd=Decimal("0.010"))
    talking, other = await session_for(alice), await session_for(alice)
    for s, call in ((talking, "rtc_talking"), (other, "rtc_other")):
        await Call.objects.acreate(session=s, number=1, call_id=call)
    comm, _ = await connect(talking, alice)
    other_comm, _ = await connect(other, alice)
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_a", "usage": USAGE})
    assert (await comm.receive_json_from())["type"] == "usage.ack"  # $0.0070: under the limit
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_b", "usage": USAGE})
    assert (await comm.receive_json_from())["type"] == "usage.ack"  # $0.0139: over it
    assert (await comm.receive_json_from())["type"] == "budget.exceeded"
    assert (await other_comm.receive_json_from())["type"] == "budget.exceeded"
    for s in (talking, other):
        await s.arefresh_from_db()
        assert s.status == "ended" and s.end_reason == "budget"
    assert sorted(r.url.path for r in fake.requests) == [
        "/v1/realtime/calls/rtc_other/hangup", "/v1/realtime/calls/rtc_talking/hangup"]
    # Overshoot: no more than the one response that crossed the line.
    spent = await database_sync_to_async(budget.spent)()
    assert Decimal(0) < spent - budget.monthly_limit_usd <= Decimal("0.0069656")
    await comm.disconnect()
    await other_comm.disconnect()


async def test_reports_arriving_together_are_stored_in_few_transactions(alice, monkeypatch):
    """Thirty sockets report at once: the process's recorder stores them in batches (far fewer calls than
    reports), and each socket is acked with its own record."""
    import asyncio

    from sessions_app import usage

    calls = []
    real = usage.record_many

    def counting(reports):
        calls.append(len(reports))
        return real(reports)

    monkeypatch.setattr(usage, "record_many", counting)
    sessions = [await session_for(alice) for _ in range(30)]
    sockets = [(await connect(session, alice))[0] for session in sessions]
    for n, comm in enumerate(sockets):
        await comm.send_json_to({"type": "usage.report", "response_id": f"resp_{n}", "usage": USAGE})
    acks = [await comm.receive_json_from(timeout=10) for comm in sockets]
    assert [ack["response_id"] for ack in acks] == [f"resp_{n}" for n in range(30)]
    assert all(ack["type"] == "usage.ack" and not ack["duplicate"] for ack in acks)
    assert sum(calls) == 30 and len(calls) < 30, calls
    count = await database_sync_to_async(UsageRecord.objects.count)()
    assert count == 30
    await asyncio.gather(*(comm.disconnect() for comm in sockets))


async def test_a_report_that_breaks_its_batch_fails_alone_and_its_socket_stays_up(alice, monkeypatch):
    """A fault no validation foresaw, raised by one report of a batch, must not take the others' acks (or
    their sockets) with it: the batch is met again one report at a time, and that one socket hears an error."""
    import asyncio

    from sessions_app import usage

    real, batches = usage.priced, []

    def priced(report, *args):
        if report.key == "resp_poison":
            raise OverflowError("a fault of ours")
        return real(report, *args)

    record_many = usage.record_many
    monkeypatch.setattr(usage, "priced", priced)
    monkeypatch.setattr(usage, "record_many", lambda reports: batches.append(len(reports)) or record_many(reports))
    sessions = [await session_for(alice) for _ in range(6)]
    sockets = [(await connect(session, alice))[0] for session in sessions]
    ids = ["resp_poison" if n == 2 else f"resp_{n}" for n in range(6)]
    for comm, response_id in zip(sockets, ids):
        await comm.send_json_to({"type": "usage.report", "response_id": response_id, "usage": USAGE})
    answers = [await comm.receive_json_from(timeout=10) for comm in sockets]
    assert max(batches) > 1, batches  # the poison shared a batch with others
    assert [a["type"] for a in answers] == ["usage.ack", "usage.ack", "error", "usage.ack", "usage.ack", "usage.ack"]
    assert answers[2]["code"] == "not_recorded" and answers[2]["response_id"] == "resp_poison"
    stored = await database_sync_to_async(lambda: set(UsageRecord.objects.values_list("response_id", flat=True)))()
    assert stored == set(ids) - {"resp_poison"}
    # The socket that sent it is still up.
    await sockets[2].send_json_to({"type": "usage.report", "response_id": "resp_after", "usage": USAGE})
    assert (await sockets[2].receive_json_from())["type"] == "usage.ack"
    await asyncio.gather(*(comm.disconnect() for comm in sockets))


async def test_only_the_page_that_connected_last_marks_the_conversation_left(alice):
    """A tab letting go of a conversation that went on in a newer tab leaves it held by that tab."""
    session = await session_for(alice)
    older, _ = await connect(session, alice)
    newer, _ = await connect(session, alice)
    await older.disconnect()
    await database_sync_to_async(session.refresh_from_db)()
    assert session.page_left_at is None
    await newer.disconnect()
    await database_sync_to_async(session.refresh_from_db)()
    assert session.page_left_at is not None and session.page_left_at > session.page_connected_at


async def test_the_page_left_mark_is_retried_through_a_database_error(alice, monkeypatch):
    """A page that goes while the database refuses a write (locked, a dropped connection) is still marked
    gone, so the sideband worker ends its call instead of billing it until the upstream's cap."""
    from django.db import OperationalError
    from django.db.models import QuerySet

    from sessions_app import sideband

    monkeypatch.setattr(sideband, "BACKOFF_FIRST", 0.01)
    session = await session_for(alice)
    comm, _ = await connect(session, alice)
    refusals = []
    update = QuerySet.update

    def flaky_update(queryset, **values):
        if "page_left_at" in values and len(refusals) < 2:
            refusals.append(values)
            raise OperationalError("database is locked")
        return update(queryset, **values)

    monkeypatch.setattr(QuerySet, "update", flaky_update)
    await comm.disconnect()
    await database_sync_to_async(session.refresh_from_db)()
    assert len(refusals) == 2
    assert session.page_left_at is not None and session.page_left_at > session.page_connected_at


async def test_a_socket_gone_while_its_report_is_stored_loses_neither_the_update_nor_the_budget_stop(
        alice, monkeypatch):
    """The socket that sent a report may close (its task cancelled) while the report's batch is in the
    database: the report is stored, so the dashboards hear of it and a budget it crossed still ends the
    conversation and hangs its call up."""
    import threading

    from sessions_app import upstream, usage
    from sessions_app.consumers import UsageRecorder
    from sessions_app.models import Budget
    from tests.upstream_fake import FakeUpstream

    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    await Budget.objects.acreate(user=alice, monthly_limit_usd=Decimal("0.005"))  # one report crosses it
    session = await session_for(alice)
    await Call.objects.acreate(session=session, number=1, call_id="rtc_gone")
    group_layer, group_channel = get_channel_layer(), await get_channel_layer().new_channel()
    await group_layer.group_add(f"session-{session.pk}", group_channel)
    layer, channel = await dashboard_listener()

    in_database, release = threading.Event(), threading.Event()
    record_many = usage.record_many

    def held(reports):
        in_database.set()
        release.wait(5)
        return record_many(reports)

    monkeypatch.setattr(usage, "record_many", held)
    waiting = asyncio.ensure_future(UsageRecorder.of(get_channel_layer()).record(
        usage.Report(session.pk, "resp_orphan", USAGE, source=UsageRecord.CLIENT)))
    assert await asyncio.to_thread(in_database.wait, 5)
    waiting.cancel()  # the socket closes: its consumer stops waiting for the answer
    release.set()

    event = await asyncio.wait_for(layer.receive(channel), 5)
    assert [u["response_id"] for u in event["updates"]] == ["resp_orphan"]
    stop = await asyncio.wait_for(group_layer.receive(group_channel), 5)
    assert stop["type"] == "budget.exceeded"
    for _ in range(50):
        if fake.requests:
            break
        await asyncio.sleep(0.05)
    assert [r.url.path for r in fake.requests] == ["/v1/realtime/calls/rtc_gone/hangup"]
    await session.arefresh_from_db()
    assert session.status == "ended" and session.end_reason == "budget"
    assert waiting.cancelled()


async def test_the_page_says_it_closed_a_call_and_the_server_hangs_it_up(alice, bob, monkeypatch):
    """call.closed: the call ends on the record (call_closed) and is hung up, so a page's word is made true;
    a call that had ended before keeps its reason and is not hung up again; anything else is an error."""
    from sessions_app import upstream
    from tests.upstream_fake import FakeUpstream

    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    session = await session_for(alice)
    await Call.objects.acreate(session=session, number=1, call_id="rtc_one", status=Call.ENDED, end_reason="replaced")
    await Call.objects.acreate(session=session, number=2, call_id="rtc_two")
    others = await session_for(bob)
    await Call.objects.acreate(session=others, number=3, call_id="rtc_bobs")
    comm, _ = await connect(session, alice)
    await comm.send_json_to({"type": "call.closed", "call": 2})
    assert await comm.receive_json_from() == {"type": "call.ended", "call": 2, "reason": "call_closed"}
    call = await Call.objects.aget(call_id="rtc_two")
    assert (call.status, call.end_reason) == ("ended", "call_closed")
    assert [r.url.path for r in fake.requests] == ["/v1/realtime/calls/rtc_two/hangup"]
    # Said again (a resend after a reconnect), or of a call that ended otherwise: the reason it has, no hangup.
    await comm.send_json_to({"type": "call.closed", "call": 2})
    assert (await comm.receive_json_from())["reason"] == "call_closed"
    await comm.send_json_to({"type": "call.closed", "call": 1})
    assert await comm.receive_json_from() == {"type": "call.ended", "call": 1, "reason": "replaced"}
    assert len(fake.requests) == 1
    for bad in (3, 0, -1, True, "2", 2.0, None, 2**40):
        await comm.send_json_to({"type": "call.closed", "call": bad})
        error = await comm.receive_json_from()
        assert error["type"] == "error" and error["code"] == "invalid_call", bad
    assert (await Call.objects.aget(call_id="rtc_bobs")).status == "active" and len(fake.requests) == 1
    await session.arefresh_from_db()
    assert session.status == "active"
    await comm.disconnect()


async def test_a_report_met_by_a_database_error_is_said_to_be_unavailable_and_stored_when_sent_again(
        alice, monkeypatch):
    """The database away: the socket stays up and hears `unavailable` (the page sends the report again
    shortly; it once lost the socket, and a fault of another kind the report); once it is back, the same
    report is stored once."""
    from django.db import OperationalError

    from sessions_app import usage

    real, refused = usage.record_many, []

    def record_many(reports):
        if not refused:
            refused.append(len(reports))
            raise OperationalError("the server closed the connection unexpectedly")
        return real(reports)

    monkeypatch.setattr(usage, "record_many", record_many)
    session = await session_for(alice)
    comm, _ = await connect(session, alice)
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_blip", "usage": USAGE})
    error = await comm.receive_json_from()
    assert (error["type"], error["code"], error["response_id"]) == ("error", "unavailable", "resp_blip")
    await comm.send_json_to({"type": "usage.report", "response_id": "resp_blip", "usage": USAGE})
    ack = await comm.receive_json_from()
    assert ack["type"] == "usage.ack" and not ack["duplicate"]
    assert await UsageRecord.objects.filter(response_id="resp_blip").acount() == 1
    await comm.disconnect()


async def test_a_transcript_line_or_closed_call_met_by_a_database_error_is_said_to_be_unavailable(alice, monkeypatch):
    """Both closed the page's socket on a database error (a locked SQLite, a lost connection): now the socket
    stays up and hears `unavailable` naming what to send again, and a second try is stored."""
    from django.db import OperationalError

    from sessions_app.consumers import SessionUsageConsumer

    def once(name):
        real, failed = SessionUsageConsumer.__dict__[name], []

        async def flaky(self, *args):
            if not failed:
                failed.append(name)
                raise OperationalError("database is locked")
            return await real.__get__(self, SessionUsageConsumer)(*args)

        monkeypatch.setattr(SessionUsageConsumer, name, flaky)

    once("store_transcript")
    once("end_closed_call")
    session = await session_for(alice)
    await Call.objects.acreate(session=session, number=1, call_id="rtc_closed")
    comm, _ = await connect(session, alice)
    line = {"type": "transcript.report", "item_id": "item_9", "role": "user", "text": "Hello there."}
    await comm.send_json_to(line)
    error = await comm.receive_json_from()
    assert (error["type"], error["code"], error["item_id"]) == ("error", "unavailable", "item_9")
    assert "response_id" not in error  # a transcription's usage for the same item is another matter
    await comm.send_json_to(line)
    assert await comm.receive_json_from() == {"type": "transcript.ack", "item_id": "item_9"}
    assert await TranscriptEntry.objects.filter(session=session, item_id="item_9").acount() == 1

    await comm.send_json_to({"type": "call.closed", "call": 1})
    error = await comm.receive_json_from()
    assert (error["code"], error["call"]) == ("unavailable", 1)
    await comm.send_json_to({"type": "call.closed", "call": 1})
    assert await comm.receive_json_from() == {"type": "call.ended", "call": 1, "reason": "call_closed"}
    await comm.disconnect()


async def test_a_tab_still_holding_an_earlier_call_does_not_pass_for_the_conversations_page(alice):
    """The conversation went on in tab B (call 2) while tab A's socket was down; A's socket came back and
    then closed, which marked the conversation's page gone while B was in it, and the sweep ended it."""
    import datetime

    session = await session_for(alice)
    await Call.objects.acreate(session=session, number=1, call_id="rtc_old", status=Call.ENDED, end_reason="replaced")
    await Call.objects.acreate(session=session, number=2, call_id="rtc_new")
    sweep = database_sync_to_async(RealtimeSession.objects.sweep)
    now_gone, cap = datetime.timedelta(0), datetime.timedelta(hours=2)
    tab_b, _ = await connect(session, alice, query="?call=2")
    tab_a, _ = await connect(session, alice, query="?call=1")
    await tab_a.disconnect()
    row = await RealtimeSession.objects.aget(pk=session.pk)
    assert row.page_connected_at is not None and row.page_left_at is None
    assert await sweep(now_gone, cap) == []
    await tab_b.disconnect()  # the page holding the newest call leaves: now the conversation looks gone
    row = await RealtimeSession.objects.aget(pk=session.pk)
    assert row.page_left_at > row.page_connected_at
    ((ended, _, reason),) = await sweep(now_gone, cap)
    assert (ended, reason) == (session.pk, "page_gone")
    for query in ("?call=0", "?call=abc", "?call=2147483648", "?call=1&call=x"):
        _, connected = await connect(session, alice, query=query)
        assert not connected, query


async def test_of_two_conversations_started_at_once_the_second_page_to_connect_is_ended(alice, bob, monkeypatch):
    """Two devices pressed Start in the same moment: both starts passed the one-conversation check (neither
    page had connected yet) and both ran, billed. The second page to connect now ends its conversation,
    hangs its call up, and hears why; the first runs on. Sockets that do not say a call (the ingest
    benchmark's) and other people's conversations are not counted."""
    from sessions_app import upstream
    from tests.upstream_fake import FakeUpstream

    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    first, second, bobs = await session_for(alice), await session_for(alice), await session_for(bob)
    for session, call_id in ((first, "rtc_first"), (second, "rtc_second"), (bobs, "rtc_bobs")):
        await Call.objects.acreate(session=session, number=1, call_id=call_id)
    page_one, _ = await connect(session=first, user=alice, query="?call=1")
    page_bob, _ = await connect(session=bobs, user=bob, query="?call=1")
    page_two, connected = await connect(session=second, user=alice, query="?call=1")
    assert connected
    assert await page_two.receive_json_from() == {"type": "call.ended", "call": None, "reason": "running_elsewhere"}
    await second.arefresh_from_db()
    assert (second.status, second.end_reason) == ("ended", "running_elsewhere")
    assert (await Call.objects.aget(call_id="rtc_second")).status == "ended"
    assert [r.url.path for r in fake.requests] == ["/v1/realtime/calls/rtc_second/hangup"]
    for session in (first, bobs):
        await session.arefresh_from_db()
        assert session.status == "active"
    # The first page coming back (a reconnect) is still the conversation's page.
    await page_one.disconnect()
    page_one, _ = await connect(session=first, user=alice, query="?call=1")
    assert await page_one.receive_nothing()
    await first.arefresh_from_db()
    assert first.status == "active"
    # A socket that says no call is not a page holding one: nothing is ended.
    third = await session_for(alice)
    listener, _ = await connect(session=third, user=alice)
    await third.arefresh_from_db()
    assert third.status == "active"
    for comm in (page_one, page_two, page_bob, listener):
        await comm.disconnect()
