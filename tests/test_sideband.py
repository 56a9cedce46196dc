"""The sideband worker against the simulator: verified usage, mismatches, dead pages, closed calls."""

import asyncio
import datetime
from decimal import Decimal

import aiohttp
import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from realtime_sim import start_simulator
from realtime_sim.tests.rtc_client import RtcClient
from sessions_app.models import RealtimeSession, TranscriptEntry, UsageRecord
from sessions_app.pricing import TokenCounts
from sessions_app.sideband import SidebandWorker

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
KEY = "sk-test-sideband-key"


@pytest.fixture
async def sim(settings):
    simulator = await start_simulator("127.0.0.1", 0, api_key=KEY)
    settings.OPENAI_BASE_URL = simulator.base_url
    settings.OPENAI_API_KEY = KEY
    yield simulator
    await simulator.stop()


async def call(sim):
    async with aiohttp.ClientSession() as http:
        body = {"session": {"type": "realtime", "model": "gpt-realtime",
                            "audio": {"input": {"turn_detection": None}}}}
        async with http.post(f"{sim.base_url}/v1/realtime/client_secrets", json=body,
                             headers={"Authorization": f"Bearer {KEY}"}) as response:
            secret = (await response.json())["value"]
    client = RtcClient()
    await client.connect(sim.base_url, secret)
    return client


@database_sync_to_async
def session_for(user, call_id):
    now = timezone.now()
    return RealtimeSession.objects.create(
        user=user, team=user.memberships.get().team, model="gpt-realtime", voice="marin", turn_detection="push_to_talk",
        secret_expires_at=now, instructions="x", call_id=call_id, status="active", connected_at=now,
        page_connected_at=now,
    )


async def until(predicate, timeout=10):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await database_sync_to_async(predicate)()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
async def worker():
    stop = asyncio.Event()
    worker = SidebandWorker(name="test-worker", poll_seconds=0.05, page_grace_seconds=1)
    task = asyncio.create_task(worker.run(stop))
    yield worker
    stop.set()
    await task


async def test_verified_usage_is_recorded_and_an_under_report_flagged(sim, alice, worker):
    client = await call(sim)
    session = await session_for(alice, client.call_id)
    await until(lambda: RealtimeSession.objects.get(pk=session.pk).sideband_owner == "test-worker")
    client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "The launch is in March. The budget is small."}]}})
    client.send({"type": "response.create"})
    done = await client.wait_for("response.done", timeout=15)
    verified = await until(lambda: UsageRecord.objects.filter(session=session, source="server").first())
    assert verified.response_id == done["response"]["id"]
    usage = done["response"]["usage"]
    assert verified.input_tokens == usage["input_tokens"] and verified.output_tokens == usage["output_tokens"]
    await session.arefresh_from_db()
    assert session.verified and session.verified_cost_usd == verified.cost_usd > 0
    # The transcript the upstream spoke is stored from the server's own view.
    entry = await until(lambda: TranscriptEntry.objects.filter(session=session, role="assistant").first())
    assert "March" in entry.text or "budget" in entry.text

    # A browser that reports less than the upstream billed is flagged.
    await database_sync_to_async(session.record_usage)(
        done["response"]["id"], TokenCounts(output_audio=1), Decimal("0.000064")
    )
    await session.arefresh_from_db()
    assert session.usage_mismatch and session.totals()["usage_mismatch"] is True
    await client.close()


async def test_a_browser_that_never_reports_is_flagged(sim, alice, worker):
    client = await call(sim)
    session = await session_for(alice, client.call_id)
    await until(lambda: RealtimeSession.objects.get(pk=session.pk).sideband_owner)
    client.send({"type": "response.create"})
    await client.wait_for("response.done", timeout=15)
    await until(lambda: RealtimeSession.objects.get(pk=session.pk).verified)
    await session.arefresh_from_db()
    assert session.response_count == 0 and session.usage_mismatch
    await client.close()


async def test_a_page_that_went_away_gets_its_call_hung_up(sim, alice, worker):
    client = await call(sim)
    session = await session_for(alice, client.call_id)
    await until(lambda: RealtimeSession.objects.get(pk=session.pk).sideband_owner)
    # The page's socket closed and did not come back (a tab killed without pagehide).
    now = timezone.now()
    await RealtimeSession.objects.filter(pk=session.pk).aupdate(
        page_connected_at=now - datetime.timedelta(seconds=10), page_left_at=now - datetime.timedelta(seconds=5)
    )
    ended = await until(lambda: RealtimeSession.objects.filter(pk=session.pk, status="ended").first())
    assert ended.end_reason == "page_gone"
    # The hangup follows the database update.
    await until(lambda: sim.state.calls[client.call_id].hungup)
    await client.close()


async def test_a_closed_call_ends_the_session(sim, alice, worker):
    client = await call(sim)
    session = await session_for(alice, client.call_id)
    await until(lambda: RealtimeSession.objects.get(pk=session.pk).sideband_owner)
    await client.close()  # the browser closed its peer connection
    ended = await until(lambda: RealtimeSession.objects.filter(pk=session.pk, status="ended").first(), timeout=15)
    assert ended.end_reason == "call_closed"


async def test_two_workers_never_watch_the_same_call(sim, alice, worker):
    other = SidebandWorker(name="other-worker", poll_seconds=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop))
    clients = [await call(sim) for _ in range(3)]
    sessions = [await session_for(alice, c.call_id) for c in clients]
    await until(lambda: all(RealtimeSession.objects.get(pk=s.pk).sideband_owner for s in sessions))
    assert sorted([*worker.watching, *other.watching]) == sorted(s.pk for s in sessions)
    assert not set(worker.watching) & set(other.watching)
    for c in clients:
        await c.close()
    stop.set()
    await task


async def test_a_session_that_never_got_a_call_is_ended_after_its_secret_expires(alice, worker):
    @database_sync_to_async
    def make(expired):
        expires = timezone.now() + datetime.timedelta(seconds=-30 if expired else 60)
        return RealtimeSession.objects.create(
            user=alice, model="gpt-realtime", voice="marin", turn_detection="server_vad",
            secret_expires_at=expires, instructions="x",
        )

    stale, fresh = await make(expired=True), await make(expired=False)
    ended = await until(lambda: RealtimeSession.objects.filter(pk=stale.pk, status="ended").first())
    assert ended.end_reason == "never_connected"
    await fresh.arefresh_from_db()
    assert fresh.status == "created"
