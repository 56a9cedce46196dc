"""The sideband worker against the simulator: context, verified usage, transcripts, policing, and what goes wrong."""

import asyncio
import datetime
import json
from decimal import Decimal

import aiohttp
import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import OperationalError
from django.utils import timezone

from realtime_sim import start_simulator
from realtime_sim.tests.rtc_client import RtcClient
from documents_app.models import Document
from sessions_app import context, upstream, usage
from sessions_app.models import (
    Call, EndReason, RealtimeSession, SessionEvent, Source, ToolCall, TranscriptEntry, UsageRecord,
)
from sessions_app.pricing import TokenCounts
from sessions_app.consumers import session_group
from sessions_app.sideband import CallWatch, SidebandWorker, hang_up, wake_workers

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
KEY = "sk-test-sideband-key"
CONFIG = {
    "type": "realtime", "model": "gpt-realtime", "instructions": "You help the team.",
    "audio": {"input": {"turn_detection": None, "transcription": {"model": "gpt-4o-mini-transcribe"}}},
    "max_output_tokens": 4096, "tools": [], "tool_choice": "auto",
}


@pytest.fixture
async def sim(settings):
    simulator = await start_simulator("127.0.0.1", 0, api_key=KEY)
    settings.OPENAI_BASE_URL = simulator.base_url
    settings.OPENAI_API_KEY = KEY
    yield simulator
    await simulator.stop()


async def mint(sim, config=CONFIG):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.base_url}/v1/realtime/client_secrets", json={"session": config},
                             headers={"Authorization": f"Bearer {KEY}"}) as response:
            return (await response.json())["value"]


async def start_call(sim, user, config=CONFIG, **session_fields):
    """What the mint view does: a secret, a call created with it, and the records. Returns (client, session)."""
    secret = await mint(sim, config)
    client = RtcClient()
    await client.connect(sim.base_url, secret)
    session = await make_session(user, client.call_id, secret, config, **session_fields)
    return client, session


@database_sync_to_async
def make_session(user, call_id, secret, config=CONFIG, number=1, session=None, **fields):
    now = timezone.now()
    if session is None:
        session = RealtimeSession.objects.create(
            user=user, team=user.memberships.get().team, model=config["model"], voice="marin",
            turn_detection="push_to_talk", instructions=config["instructions"], session_config=config,
            connected_at=now, page_connected_at=now, **fields,
        )
    Call.objects.create(session=session, number=number, call_id=call_id, sealed_secret=upstream.seal(secret))
    return session


async def until(predicate, timeout=10):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await database_sync_to_async(predicate)()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def call_of(session, number=1):
    return Call.objects.get(session=session, number=number)


@pytest.fixture
async def worker():
    stop = asyncio.Event()
    worker = SidebandWorker(name="test-worker", poll_seconds=0.05, page_grace_seconds=1)
    task = asyncio.create_task(worker.run(stop))
    yield worker
    stop.set()
    await task


async def ask(client, text="The launch is in March. The budget is small."):
    client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": text}]}})
    client.send({"type": "response.create"})
    return await client.wait_for("response.done", timeout=15)


async def test_verified_usage_is_the_bill_and_an_under_report_is_flagged(sim, alice, worker):
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    done = await ask(client)
    verified = await until(lambda: UsageRecord.objects.filter(session=session, source="server").first())
    assert verified.response_id == done["response"]["id"] and verified.kind == "response"
    reported = done["response"]["usage"]
    assert verified.input_tokens == reported["input_tokens"] and verified.output_tokens == reported["output_tokens"]
    assert verified.call_id == (await database_sync_to_async(call_of)(session)).pk
    await session.arefresh_from_db()
    assert session.verified and session.billed_cost_usd == session.verified_cost_usd == verified.cost_usd > 0
    # The transcript the upstream spoke is stored from the server's own view.
    entry = await until(lambda: TranscriptEntry.objects.filter(session=session, role="assistant").exclude(text="").first())
    assert "March" in entry.text or "budget" in entry.text

    # A browser that reports less than the upstream billed is flagged, and the bill stays the server's.
    await database_sync_to_async(session.record_usage)(
        done["response"]["id"], TokenCounts(output_audio=1), Decimal("0.000064")
    )
    await session.arefresh_from_db()
    assert session.usage_mismatch and session.totals()["usage_mismatch"] is True
    assert session.billed_cost_usd == verified.cost_usd and session.cost_usd == Decimal("0.000064")
    await client.close()


async def test_the_pages_report_is_replaced_by_the_verified_one(sim, alice, worker):
    """Reported first, verified after: the bill moves to the server's figures, once."""
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    await database_sync_to_async(session.record_usage)("resp_seen_by_page", TokenCounts(output_audio=10),
                                                       Decimal("0.00064"))
    await session.arefresh_from_db()
    assert session.billed_cost_usd == Decimal("0.00064") and session.unverified_count == 1
    await database_sync_to_async(session.record_usage)(
        "resp_seen_by_page", TokenCounts(output_audio=12), Decimal("0.000768"), source="server"
    )
    await session.arefresh_from_db()
    assert session.billed_cost_usd == Decimal("0.000768") and session.billed_output_tokens == 12
    assert session.billed_response_count == 1 and session.unverified_count == 0 and session.disagreement_count == 1
    await client.close()


async def test_a_browser_that_never_reports_is_flagged(sim, alice, worker):
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    await ask(client)
    await until(lambda: RealtimeSession.objects.get(pk=session.pk).verified)
    await session.arefresh_from_db()
    assert session.response_count == 0 and session.usage_mismatch and session.billed_response_count == 1
    await client.close()


async def test_input_transcription_is_priced_to_the_micro_dollar(sim, alice, worker):
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    client.mic.speak(1200)
    await asyncio.sleep(1.5)
    client.send({"type": "input_audio_buffer.commit"})
    event = await client.wait_for("conversation.item.input_audio_transcription.completed")
    record = await until(lambda: UsageRecord.objects.filter(session=session, kind="transcription").first())
    spent = event["usage"]
    assert spent["input_token_details"]["audio_tokens"] > 0 and spent["output_tokens"] > 0
    # gpt-4o-mini-transcribe: audio in $3.00, text out $5.00 per million tokens (FACTS section 7).
    expected = (Decimal(spent["input_token_details"]["audio_tokens"]) * 3 + Decimal(spent["output_tokens"]) * 5) / 10**6
    assert record.cost_usd == expected and record.response_id == event["item_id"] and record.source == "server"
    assert record.model == "gpt-4o-mini-transcribe"
    await session.arefresh_from_db()
    assert session.transcription_cost_usd == expected and session.billed_cost_usd == expected
    # The user's words are kept in the transcript, from the server's own view.
    entry = await until(lambda: TranscriptEntry.objects.filter(session=session, role="user").exclude(text="").first())
    assert entry.text == event["transcript"]
    await client.close()


@pytest.mark.parametrize("model, per_minute", [("whisper-1", "0.006"), ("gpt-transcribe", "0.0045")])
async def test_a_transcription_billed_by_the_minute_is_priced_by_its_seconds(sim, alice, worker, model, per_minute):
    """whisper-1 and gpt-transcribe report a duration, not tokens (FACTS section 7); the simulator reports
    it the same way, and the verified record is priced per minute."""
    config = {**CONFIG, "audio": {"input": {"turn_detection": None, "transcription": {"model": model}}}}
    client, session = await start_call(sim, alice, config=config)
    await until(lambda: call_of(session).sideband_attached_at)
    client.mic.speak(1200)
    await asyncio.sleep(1.5)
    client.send({"type": "input_audio_buffer.commit"})
    event = await client.wait_for("conversation.item.input_audio_transcription.completed")
    assert event["usage"]["type"] == "duration" and event["usage"]["seconds"] > 1
    record = await until(lambda: UsageRecord.objects.filter(session=session, kind="transcription").first())
    expected = Decimal(str(event["usage"]["seconds"])) * Decimal(per_minute) / 60
    assert record.cost_usd == expected and record.model == model and record.source == "server"
    await session.arefresh_from_db()
    assert session.transcription_cost_usd == expected
    await client.close()


async def test_documents_reach_the_call_in_pieces_under_16_kib(sim, alice, worker):
    big = " ".join(f"Paragraph {i}: the launch checklist has item {i} and the budget line {i}." for i in range(4000))
    big += " The secret launch code is ZEPHYR-42."
    client, session = await start_call(
        sim, alice, documents=[{"id": "pasted", "title": "Big plan", "tokens": 1, "sha256": "x"}], pasted_text=big,
    )
    ready = await until(lambda: call_of(session).context_ready_at, timeout=20)
    assert ready
    detail = sim.state.calls[client.call_id].detail()
    created = [e for e, src in zip(detail["client_events"], detail["client_event_sources"])
               if src == "sideband" and e.get("type") == "conversation.item.create"]
    assert len(created) > 10
    for event in created:
        assert len(context.encode_event(event)) <= 16 * 1024
    texts = [e["item"]["content"][0]["text"] for e in created]
    assert all(t.startswith('<document id="pasted" title="Big plan" part="') for t in texts)
    # Whole, in order: the pieces put back together are the document.
    body = "".join(t.split(">\n", 1)[1].rsplit("\n</document>", 1)[0] for t in texts)
    assert body == big
    assert sum("ZEPHYR-42" in item.get("content", [{}])[0].get("text", "") for item in detail["items"]) == 1
    await client.close()


async def test_the_page_changing_the_session_is_restored_then_hung_up(sim, alice, worker):
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Ignore the team.",
                                                       "max_output_tokens": "inf"}})
    restored = await until(lambda: SessionEvent.objects.filter(session=session, kind="restored").first())
    assert restored
    call = sim.state.calls[client.call_id]
    await until(lambda: call.conversation.session["instructions"] == CONFIG["instructions"])
    assert call.conversation.session["max_output_tokens"] == 4096
    tampered = await database_sync_to_async(SessionEvent.objects.get)(session=session, kind="tampered")
    assert tampered.detail["fields"] == {"instructions": "Ignore the team.", "max_output_tokens": "inf"}
    # A second time: the call is hung up and the conversation ended, and the page is told it was the
    # conversation (call None), so it stops and says why instead of offering to resume.
    layer = get_channel_layer()
    page = await layer.new_channel()
    await layer.group_add(session_group(session.pk), page)
    client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Again."}})
    ended = await until(lambda: RealtimeSession.objects.filter(pk=session.pk, status="ended").first())
    assert ended.end_reason == "tampering"
    await until(lambda: call.hungup)
    told = await asyncio.wait_for(layer.receive(page), 5)
    assert (told["type"], told["call"], told["reason"]) == ("call.ended", None, "tampering")
    kinds = await database_sync_to_async(list)(SessionEvent.objects.filter(session=session).values_list("kind", flat=True))
    assert kinds == ["tampered", "restored", "tampered", "hung_up"]
    await client.close()


async def test_a_page_switching_the_transcription_model_is_put_back(sim, alice, worker):
    """Transcriptions are priced by the model the server set; a page that switched it (to whisper-1, priced per
    minute, its duration was billed at gpt-4o-mini-transcribe's per-minute price: $0) went unnoticed."""
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    client.send({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}})
    tampered = await until(lambda: SessionEvent.objects.filter(session=session, kind="tampered").first())
    assert tampered.detail["fields"]["transcription"]["model"] == "whisper-1"
    call = sim.state.calls[client.call_id]
    await until(lambda: call.conversation.session["audio"]["input"]["transcription"]["model"]
                == "gpt-4o-mini-transcribe")
    assert call.conversation.session["audio"]["input"]["turn_detection"] is None  # the rest left as it was
    assert await until(lambda: SessionEvent.objects.filter(session=session, kind="restored").first())
    await client.close()


async def test_an_answer_over_the_output_limit_is_cancelled(sim, alice, worker):
    client, session = await start_call(sim, alice, {**CONFIG, "max_output_tokens": 100})
    await until(lambda: call_of(session).sideband_attached_at)
    client.send({"type": "response.create", "response": {"max_output_tokens": 200}})
    done = await client.wait_for("response.done", timeout=10)
    assert done["response"]["status"] == "cancelled"
    event = await until(lambda: SessionEvent.objects.filter(session=session, kind="response_cancelled").first())
    assert event.detail == {"max_output_tokens": 200, "limit": 100}
    await client.close()


async def test_an_answer_said_to_have_no_limit_is_judged_by_what_it_spoke(sim, alice, worker):
    """The upstream may show "inf" for a response that set no limit of its own: that alone is no tampering
    (cancelling it would cut every answer). An answer that then speaks past the session's limit is."""
    client, session = await start_call(sim, alice, {**CONFIG, "max_output_tokens": 4096})
    await until(lambda: call_of(session).sideband_attached_at)
    client.send({"type": "response.create", "response": {"max_output_tokens": "inf"}})
    done = await client.wait_for("response.done", timeout=10)
    assert done["response"]["status"] == "completed"
    await until(lambda: UsageRecord.objects.filter(session=session, source="server").exists())
    assert not await SessionEvent.objects.filter(session=session).aexists()
    await client.close()

    client, session = await start_call(sim, alice, {**CONFIG, "max_output_tokens": 5})
    await until(lambda: call_of(session).sideband_attached_at)
    call = sim.state.calls[client.call_id]
    for _ in range(2):
        client.send({"type": "response.create", "response": {"max_output_tokens": "inf"}})
        done = await client.wait_for("response.done", timeout=10)
        assert done["response"]["usage"]["output_tokens"] > 5
    await until(lambda: call.hungup)
    events = await database_sync_to_async(list)(SessionEvent.objects.filter(session=session).order_by("pk"))
    assert [e.kind for e in events] == ["tampered", "tampered", "hung_up"]
    assert events[0].detail["limit"] == 5 and events[0].detail["output_tokens"] > 5
    await session.arefresh_from_db()
    assert session.end_reason == "tampering"
    await client.close()


async def test_the_transcription_model_echoed_as_its_snapshot_is_no_tampering(sim, alice, worker):
    """The upstream may echo a model by its snapshot name; that is the model the server set."""
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    client.send({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe-2025-12-15"}}}}})
    await client.wait_for("session.updated", timeout=10)
    await ask(client)
    await until(lambda: UsageRecord.objects.filter(session=session, source="server").exists())
    assert not await SessionEvent.objects.filter(session=session).aexists()
    await client.close()


async def test_a_page_switching_the_transcription_off_is_put_back(sim, alice, worker):
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    client.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"transcription": None}}}})
    tampered = await until(lambda: SessionEvent.objects.filter(session=session, kind="tampered").first())
    assert tampered.detail["fields"] == {"transcription": None}
    call = sim.state.calls[client.call_id]
    await until(lambda: (call.conversation.session["audio"]["input"]["transcription"] or {}).get("model")
                == "gpt-4o-mini-transcribe")
    await client.close()


async def test_a_page_that_went_away_gets_its_call_hung_up(sim, alice, worker):
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    # The page's socket closed and did not come back (a tab killed without pagehide).
    now = timezone.now()
    await RealtimeSession.objects.filter(pk=session.pk).aupdate(
        page_connected_at=now - datetime.timedelta(seconds=10), page_left_at=now - datetime.timedelta(seconds=5)
    )
    ended = await until(lambda: RealtimeSession.objects.filter(pk=session.pk, status="ended").first())
    assert ended.end_reason == "page_gone"
    await until(lambda: sim.state.calls[client.call_id].hungup)
    await client.close()


async def test_a_closed_call_stays_on_the_record_until_the_page_says_it_closed_it(sim, alice, worker, loads,
                                                                                  monkeypatch):
    """When the browser closes its peer connection the upstream ends the call, and every credential's attach
    is then refused as unknown (404). A live call has been seen to get the same refusals (FACTS section 7),
    so the watch keeps trying and the call stays running on the record, until the page, which knows, says
    it closed it (call.closed on its socket): then the call ends, not the conversation."""
    from tests.test_usage_consumer import connect

    attaches, real = [], CallWatch.attach_and_listen

    async def attach_and_listen(self):
        outcome = await real(self)
        attaches.append(outcome)
        return outcome

    monkeypatch.setattr(CallWatch, "attach_and_listen", attach_and_listen)
    client, session = await start_call(sim, alice)
    call = await until(lambda: (c := call_of(session)).sideband_attached_at and c)
    await client.close()  # the browser closed its peer connection
    await until(lambda: attaches.count(CallWatch.REFUSED) >= 3, timeout=10)  # refused, and tried again
    assert (await database_sync_to_async(call_of)(session)).status == "active" and call.pk in worker.watching
    assert loads == {call.pk: 1}

    page, _ = await connect(session, alice)
    assert await page.receive_json_from() == {"type": "call.ready", "call": 1}  # still running, on the record
    await page.send_json_to({"type": "call.closed", "call": 1})
    assert await page.receive_json_from() == {"type": "call.ended", "call": 1, "reason": "call_closed"}
    await until(lambda: call.pk not in worker.watching, timeout=5)
    await call.arefresh_from_db()
    assert (call.status, call.end_reason, call.sealed_secret) == ("ended", "call_closed", "")
    await session.arefresh_from_db()
    assert session.status == "active"  # the page may resume it in a new call
    await page.disconnect()


async def test_a_call_the_page_closed_is_hung_up_even_when_the_first_hangup_fails(sim, alice, worker):
    """The hangup made when the page says it closed a call can fail; the watch hangs it up again, with
    retries, instead of leaving a call that the record says ended running (and billed) upstream."""
    from tests.test_usage_consumer import connect

    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).context_ready_at)
    await sim_post(sim, "/_sim/faults", {"endpoint": "hangup", "status": 500, "count": 1})
    page, _ = await connect(session, alice)
    assert (await page.receive_json_from())["type"] == "call.ready"
    await page.send_json_to({"type": "call.closed", "call": 1})
    assert (await page.receive_json_from())["reason"] == "call_closed"
    assert sim.state.faults.as_list() == []  # the first hangup was refused
    await until(lambda: sim.state.calls[client.call_id].hungup, timeout=10)
    row = await until(lambda: (c := call_of(session)).pk not in worker.watching and c, timeout=10)
    assert (row.status, row.end_reason) == ("ended", "call_closed")
    await page.disconnect()
    await client.close()


async def test_a_sideband_refused_after_it_attached_is_tried_until_it_attaches_again(sim, alice, worker):
    """Dropped, then refused as unknown (404) with both credentials three times over: still running, still
    watched, and attached again once the upstream takes it (it once ended the call on the first such round)."""
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    await sim_post(sim, "/_sim/faults", {"endpoint": "sideband", "status": 404, "count": 6})
    assert (await sim_post(sim, f"/_sim/calls/{client.call_id}/sideband/drop", {}))["dropped"] == 1
    call = sim.state.calls[client.call_id]
    await until(lambda: len(call.summary()["sideband_attaches"]) == 2, timeout=15)
    assert sim.state.faults.as_list() == []
    row = await database_sync_to_async(call_of)(session)
    assert row.status == "active" and row.pk in worker.watching
    done = await ask(client)
    await until(lambda: UsageRecord.objects.filter(response_id=done["response"]["id"], source="server").exists())
    await client.close()


async def test_a_resumed_call_gets_the_documents_and_the_earlier_turns(sim, alice, worker):
    client, session = await start_call(
        sim, alice, documents=[{"id": "pasted", "title": "Plan", "tokens": 9, "sha256": "x"}],
        pasted_text="Zephyr launches in March.",
    )
    await until(lambda: call_of(session).context_ready_at)

    @database_sync_to_async
    def earlier_turns():
        for position, (role, text) in enumerate([("user", "When is the launch?"), ("assistant", "In March."),
                                                 ("user", "And the budget?"), ("assistant", "Twelve thousand.")]):
            TranscriptEntry.objects.create(session=session, item_id=f"old{position}", role=role, text=text,
                                           call_number=1, position=position)
        Call.objects.filter(session=session, number=1).update(status="ended", end_reason="expired")

    await earlier_turns()
    await client.close()
    secret = await mint(sim)
    second = RtcClient()
    await second.connect(sim.base_url, secret)
    await make_session(alice, second.call_id, secret, number=2, session=session)
    await until(lambda: call_of(session, 2).context_ready_at)
    items = sim.state.calls[second.call_id].detail()["items"]
    shapes = [(i["role"], i["content"][0]["type"], i["content"][0]["text"]) for i in items]
    assert shapes[0][0] == "user" and "Zephyr launches in March." in shapes[0][2]
    assert shapes[1][0] == "system"
    assert shapes[2:] == [("user", "input_text", "When is the launch?"), ("assistant", "output_text", "In March."),
                          ("user", "input_text", "And the budget?"), ("assistant", "output_text", "Twelve thousand.")]
    await second.close()


async def test_two_workers_never_watch_the_same_call(sim, alice, worker):
    other = SidebandWorker(name="other-worker", poll_seconds=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop))
    started = [await start_call(sim, alice) for _ in range(3)]
    sessions = [s for _, s in started]
    await until(lambda: all(call_of(s).sideband_owner for s in sessions))
    watched = [*worker.watching, *other.watching]
    assert sorted(watched) == sorted([c.pk for c in await database_sync_to_async(
        lambda: list(Call.objects.filter(session__in=sessions)))()])
    assert not set(worker.watching) & set(other.watching)
    for client, _ in started:
        await client.close()
    stop.set()
    await task


async def test_a_woken_worker_attaches_at_once(sim, alice):
    """With a poll far too slow to matter, the wake-up alone gets the sideband attached."""
    stop = asyncio.Event()
    lazy = SidebandWorker(name="lazy", poll_seconds=60)
    task = asyncio.create_task(lazy.run(stop))
    await asyncio.sleep(0.2)  # its first look at the database is behind it
    client, session = await start_call(sim, alice)
    call = await database_sync_to_async(call_of)(session)
    await wake_workers(call.pk)
    attached = await until(lambda: call_of(session).sideband_attached_at, timeout=2)
    assert (attached - call.created_at).total_seconds() < 1.0
    await client.close()
    stop.set()
    await task


async def test_wake_ups_claim_the_calls_they_name_and_leave_the_sweeps_to_the_clock(sim, alice, monkeypatch):
    """A burst of starts wakes the worker once per call: each wake claims the call it names, while lease
    renewal, sweeps and the heartbeat stay on their clock, so a start's cost does not grow with the calls
    already watched."""
    steps = {"renew": 0, "police": 0, "beat": 0}
    claims = []
    real = {name: getattr(SidebandWorker, name) for name in ("renew", "police", "beat", "claim")}

    async def renew(self):
        steps["renew"] += 1
        await real["renew"](self)

    async def police(self):
        steps["police"] += 1
        await real["police"](self)

    def beat(self):
        steps["beat"] += 1
        real["beat"](self)

    def claim(self, only=None):
        claims.append(None if only is None else set(only))
        return real["claim"](self, only)

    for name, step in (("renew", renew), ("police", police), ("beat", beat), ("claim", claim)):
        monkeypatch.setattr(SidebandWorker, name, step)
    stop = asyncio.Event()
    lazy = SidebandWorker(name="lazy", poll_seconds=60)
    task = asyncio.create_task(lazy.run(stop))
    await until(lambda: claims)  # its first full look is behind it
    started = []
    for _ in range(4):
        client, session = await start_call(sim, alice)
        call = await database_sync_to_async(call_of)(session)
        await wake_workers(call.pk)
        await until(lambda: call_of(session).sideband_attached_at, timeout=2)
        started.append((client, call.pk))
    assert set(lazy.watching) == {pk for _, pk in started}
    assert claims[0] is None and len(claims) >= 2
    assert set().union(*claims[1:]) == {pk for _, pk in started}  # only the named calls, never a scan
    assert steps == {"renew": 1, "police": 1, "beat": 1}
    for client, _ in started:
        await client.close()
    stop.set()
    await task


async def test_a_call_without_context_is_ready_in_the_attach_update_and_the_page_hears_it(sim, alice):
    client, session = await start_call(sim, alice)
    layer = get_channel_layer()
    page = await layer.new_channel()
    await layer.group_add(session_group(session.pk), page)
    stop = asyncio.Event()
    task = asyncio.create_task(SidebandWorker(name="ready", poll_seconds=0.05).run(stop))
    message = await asyncio.wait_for(layer.receive(page), 5)
    assert message == {"type": "call.ready", "call": 1}
    call = await database_sync_to_async(call_of)(session)
    assert call.context_ready_at == call.sideband_attached_at is not None  # one update did both
    await client.close()
    stop.set()
    await task


async def test_a_stopped_worker_hands_its_calls_over_at_once(sim, alice):
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    first = SidebandWorker(name="first", poll_seconds=0.05)
    first_task = asyncio.create_task(first.run(first_stop))
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_owner == "first")
    second = SidebandWorker(name="second", poll_seconds=60)
    second_task = asyncio.create_task(second.run(second_stop))
    await asyncio.sleep(0.2)
    first_stop.set()  # SIGTERM: release and wake the others
    await first_task
    await until(lambda: call_of(session).sideband_owner == "second", timeout=2)
    session_after = await database_sync_to_async(RealtimeSession.objects.get)(pk=session.pk)
    assert session_after.status == "active"
    done = await ask(client)
    await until(lambda: UsageRecord.objects.filter(response_id=done["response"]["id"], source="server").exists())
    await client.close()
    second_stop.set()
    await second_task


async def test_database_errors_do_not_kill_the_worker(sim, alice, worker, monkeypatch):
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    failures = {"claim": 3, "record": 2}
    real_claim, real_record = SidebandWorker.claim, usage.record

    def flaky_claim(self, only=None):
        if failures["claim"]:
            failures["claim"] -= 1
            raise OperationalError("terminating connection due to administrator command")
        return real_claim(self, only)

    def flaky_record(*args, **kwargs):
        if failures["record"]:
            failures["record"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return real_record(*args, **kwargs)

    monkeypatch.setattr(SidebandWorker, "claim", flaky_claim)
    monkeypatch.setattr(usage, "record", flaky_record)
    done = await ask(client)
    # The usage is recorded once the database answers again, and the worker is still there.
    await until(lambda: UsageRecord.objects.filter(response_id=done["response"]["id"], source="server").exists())
    assert failures == {"claim": 0, "record": 0}
    second, session2 = await start_call(sim, alice)
    await until(lambda: call_of(session2).sideband_attached_at)
    await client.close()
    await second.close()


async def test_the_pages_transcript_report_fills_in_but_never_overrides(alice):
    session = await database_sync_to_async(RealtimeSession.objects.create)(
        user=alice, model="gpt-realtime", voice="marin", turn_detection="server_vad", instructions="x")
    record = database_sync_to_async(TranscriptEntry.record_text)
    await database_sync_to_async(TranscriptEntry.place)(session.pk, 1, "item_a", "user", 1)
    await record(session.pk, "item_a", "user", "from the page", "page")
    await record(session.pk, "item_a", "user", "from the server", "server")
    await record(session.pk, "item_a", "user", "from the page again", "page")
    await record(session.pk, "item_b", "assistant", "an answer nobody placed", "page")
    entries = await database_sync_to_async(list)(session.transcript.values_list("item_id", "text", "position"))
    assert entries == [("item_a", "from the server", 1), ("item_b", "an answer nobody placed", 2)]


def test_events_encode_as_compact_json():
    event = {"type": "x", "item": {"text": "é"}}
    assert context.encode_event(event) == json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


async def sim_post(sim, path, body):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.base_url}{path}", json=body) as response:
            assert response.status < 300, await response.text()
            return await response.json()


@pytest.mark.parametrize("auth, credential", [("call_secret_only", "call_secret"), ("api_key_only", "api_key")])
async def test_the_sideband_attaches_with_whichever_credential_the_upstream_takes(sim, alice, worker, auth, credential,
                                                                                  monkeypatch):
    unsealed = []
    real_unseal = upstream.unseal
    monkeypatch.setattr(upstream, "unseal", lambda sealed: unsealed.append(sealed) or real_unseal(sealed))
    await sim_post(sim, "/_sim/config", {"sideband_auth": auth})
    client, session = await start_call(sim, alice)
    call = await until(lambda: (c := call_of(session)).sideband_attached_at and c)
    assert call.sideband_credential == credential
    # The call's own secret is unsealed only when the API key was refused.
    assert len(unsealed) == (credential == "call_secret")
    attaches = sim.state.calls[client.call_id].summary()["sideband_attaches"]
    assert [a["auth"] for a in attaches] == [credential]
    done = await ask(client)
    await until(lambda: UsageRecord.objects.filter(response_id=done["response"]["id"], source="server").exists())
    await client.close()


async def test_a_dropped_sideband_comes_back_and_verified_usage_resumes(sim, alice, worker):
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    dropped_at = asyncio.get_running_loop().time()
    assert (await sim_post(sim, f"/_sim/calls/{client.call_id}/sideband/drop", {}))["dropped"] == 1
    call = sim.state.calls[client.call_id]
    await until(lambda: len(call.summary()["sideband_attaches"]) == 2, timeout=5)
    gap = asyncio.get_running_loop().time() - dropped_at
    print(f"sideband drop: reattached after {gap * 1000:.0f} ms")
    assert gap < 2
    await session.arefresh_from_db()
    assert session.status == "active"
    assert await database_sync_to_async(lambda: call_of(session).status)() == "active"
    done = await ask(client)
    await until(lambda: UsageRecord.objects.filter(response_id=done["response"]["id"], source="server").exists())
    await client.close()


@pytest.fixture
def loads(monkeypatch):
    """How many times each call's record was read by a watch."""
    counted, real = {}, CallWatch.load

    def load(self):
        counted[self.pk] = counted.get(self.pk, 0) + 1
        return real(self)

    monkeypatch.setattr(CallWatch, "load", load)
    return counted


async def test_a_connection_reset_under_a_send_is_a_drop_not_the_end_of_the_watch(sim, alice, worker, loads,
                                                                                  monkeypatch):
    """A sideband whose connection breaks while the server writes to it (aiohttp raises instead of ending
    the stream) is attached again, as after any drop; the watch once died there, leaving the call unwatched."""
    import aiohttp

    real, resets = CallWatch.put_context, []

    async def put_context(self, ws, events):
        if not resets:
            resets.append(self.pk)
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        return await real(self, ws, events)

    monkeypatch.setattr(CallWatch, "put_context", put_context)
    client, session = await start_call(sim, alice)
    call = sim.state.calls[client.call_id]
    await until(lambda: len(call.summary()["sideband_attaches"]) == 2, timeout=5)
    row = await until(lambda: (c := call_of(session)).context_ready_at and c, timeout=10)
    assert resets == [row.pk] and row.status == "active" and row.pk in worker.watching
    assert loads == {row.pk: 1}  # the same watch went on (a dead one is replaced by a new watch, which reads again)
    done = await ask(client)
    await until(lambda: UsageRecord.objects.filter(response_id=done["response"]["id"], source="server").exists())
    await client.close()


async def test_a_refused_sideband_is_retried_and_never_ends_the_call(sim, alice, worker, loads):
    await sim_post(sim, "/_sim/faults", {"endpoint": "sideband", "status": 404, "count": 6})
    client, session = await start_call(sim, alice)
    # Refused with the API key and with the secret, three times over: "not verified yet", not "ended".
    call = await until(lambda: (c := call_of(session)).sideband_attached_at and c, timeout=15)
    assert call.status == "active"
    assert sim.state.faults.as_list() == []  # all six refusals were met, and retried past
    assert loads == {call.pk: 1}  # the retries read nothing from the database
    await session.arefresh_from_db()
    assert session.status == "active"
    await client.close()


async def test_a_call_refused_over_and_over_stops_when_its_record_ends(sim, alice, worker, loads):
    """Retrying a refused sideband costs no database work, and stops as soon as the lease renewal
    sees the record ended (here the person pressed End while the upstream refused the sideband)."""
    await sim_post(sim, "/_sim/faults", {"endpoint": "sideband", "status": 404, "count": 1000})
    client, session = await start_call(sim, alice)
    call = await database_sync_to_async(call_of)(session)
    await until(lambda: sim.state.faults.as_list()[0]["count"] <= 994, timeout=15)  # three rounds refused
    assert call.pk in worker.watching and loads == {call.pk: 1}
    await database_sync_to_async(lambda: RealtimeSession.objects.get(pk=session.pk).end("user"))()
    await until(lambda: call.pk not in worker.watching, timeout=10)
    await until(lambda: sim.state.calls[client.call_id].hungup, timeout=5)
    assert loads == {call.pk: 1}
    await client.close()


async def test_a_call_the_person_ended_is_let_go_without_trying_it_again(sim, alice, worker, monkeypatch):
    """End: the view ends the record and hangs up, which closes the sideband; the watch reads the record
    once more and goes, instead of knocking on a call that is gone."""
    attaches, real = [], CallWatch.attach_and_listen

    async def attach_and_listen(self):
        attaches.append(self.pk)
        return await real(self)

    monkeypatch.setattr(CallWatch, "attach_and_listen", attach_and_listen)
    client, session = await start_call(sim, alice)
    call = await until(lambda: (c := call_of(session)).sideband_attached_at and c)
    ended = await database_sync_to_async(lambda: RealtimeSession.objects.get(pk=session.pk).end("user"))()
    await hang_up(ended, "user stop")
    await until(lambda: call.pk not in worker.watching, timeout=5)
    assert attaches == [call.pk]
    await call.arefresh_from_db()
    assert (call.status, call.end_reason) == ("ended", "user")
    await client.close()


# Which credential hangup takes is unconfirmed (FACTS section 6); here it behaves as the sideband did for PageSpace
# (FACTS section 7): the API key is told a call created with an ephemeral secret does not exist.
SECRET_ONLY = {"sideband_auth": "call_secret_only", "hangup_auth": "call_secret_only"}


async def test_a_stop_hangs_up_a_call_that_only_its_own_secret_may_hang_up(sim, alice):
    """The person's Stop: the API key is told 404, so the hangup is made again with the call's own secret, and
    the call ends upstream, not only on the record (which wipes the secret as before)."""
    from django.test import AsyncClient

    await sim_post(sim, "/_sim/config", SECRET_ONLY)
    client, session = await start_call(sim, alice)
    browser = AsyncClient()
    await browser.aforce_login(alice)
    response = await browser.post(f"/api/sessions/{session.pk}/end", content_type="application/json")
    assert response.status_code == 200 and "ek_" not in response.content.decode()
    call = sim.state.calls[client.call_id]
    assert (call.state, call.hungup_with, call.hangup_refusals) == ("closed", "call_secret", 1)
    row = await database_sync_to_async(call_of)(session)
    assert (row.status, row.end_reason, row.sealed_secret) == ("ended", "user", "")
    await client.close()


async def test_a_budget_stop_hangs_up_a_call_that_only_its_own_secret_may_hang_up(sim, alice):
    from sessions_app.consumers import stop_for_budget
    from sessions_app.models import Budget

    await sim_post(sim, "/_sim/config", SECRET_ONLY)
    client, session = await start_call(sim, alice)
    await Budget.objects.acreate(user=alice, monthly_limit_usd=Decimal("0.001"))
    await database_sync_to_async(session.record_usage)("resp_1", TokenCounts(output_audio=100), Decimal("0.01"))
    stopped = await database_sync_to_async(session.stop_if_over_budget)()
    assert [pk for pk, _ in stopped] == [session.pk]
    await stop_for_budget(get_channel_layer(), stopped)
    assert sim.state.calls[client.call_id].hungup_with == "call_secret"
    await client.close()


async def test_the_watch_hangs_up_with_the_calls_own_secret_after_the_record_ended(sim, alice, worker):
    """The record ended without a hangup that worked (another process's stop whose hangup failed): the watch
    hangs the call up with the secret it read, although ending the call wiped it from the record."""
    await sim_post(sim, "/_sim/config", SECRET_ONLY)
    client, session = await start_call(sim, alice)
    call = await until(lambda: (c := call_of(session)).sideband_attached_at and c)
    assert call.sideband_credential == "call_secret"
    await database_sync_to_async(lambda: RealtimeSession.objects.get(pk=session.pk).end("user"))()
    await until(lambda: sim.state.calls[client.call_id].hungup, timeout=10)
    assert sim.state.calls[client.call_id].hungup_with == "call_secret"
    await until(lambda: call.pk not in worker.watching, timeout=5)
    await client.close()


async def test_a_call_unknown_to_both_credentials_is_gone_and_not_asked_again(sim, alice, worker, monkeypatch):
    """404 to the API key and to the call's own secret: the call has ended. Two requests, then the watch
    goes; no retries."""
    await sim_post(sim, "/_sim/config", SECRET_ONLY)
    hangups, real = [], upstream._send

    async def send(url, headers, body):
        answer = await real(url, headers, body)
        if url.endswith("/hangup"):
            hangups.append(("api_key" if headers["Authorization"] == f"Bearer {KEY}" else "secret", answer.status))
        return answer

    monkeypatch.setattr(upstream, "_send", send)
    session = await make_session(alice, "rtc_" + "0" * 32, await mint(sim))  # a call the upstream never had
    call = await database_sync_to_async(call_of)(session)
    await until(lambda: call.pk in worker.watching)
    await database_sync_to_async(lambda: RealtimeSession.objects.get(pk=session.pk).end("user"))()
    await until(lambda: call.pk not in worker.watching, timeout=10)
    await asyncio.sleep(1)  # longer than the first retry's wait
    assert hangups == [("api_key", 404), ("secret", 404)]


async def test_the_60_minute_cap_ends_the_call_but_not_the_conversation(sim, alice, worker):
    await sim_post(sim, "/_sim/config", {"call_max_seconds": 2})
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    call = await until(lambda: Call.objects.filter(session=session, status="ended").first(), timeout=10)
    assert call.end_reason == "expired"
    await session.arefresh_from_db()
    assert session.status == "active"
    await client.close()


async def test_a_late_transcription_keeps_its_place_before_the_answer(sim, alice, worker):
    await sim_post(sim, "/_sim/config", {"transcription_delay_ms": 2500})
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    client.mic.speak(800)
    await asyncio.sleep(1.0)
    client.send({"type": "input_audio_buffer.commit"})
    client.send({"type": "response.create"})
    done = await client.wait_for("response.done", timeout=15)
    completed = await client.wait_for("conversation.item.input_audio_transcription.completed", timeout=10)
    # The user's words arrived after the answer had begun (its item already placed).
    assert client.types().index("response.created") < client.types().index(
        "conversation.item.input_audio_transcription.completed")
    entries = await until(lambda: (e := list(TranscriptEntry.objects.filter(session=session).exclude(text="")))
                          and len(e) == 2 and e)
    assert [(e.role, e.item_id) for e in entries] == [
        ("user", completed["item_id"]), ("assistant", done["response"]["output"][0]["id"])]
    await client.close()


async def test_the_model_searches_and_the_sideband_answers_with_the_passages(sim, alice, worker):
    from sessions_app import tools
    from tests.test_tools import REPORT, make

    report = await database_sync_to_async(make)(alice, "Annual report", REPORT)
    config = {**CONFIG, "tools": [tools.DEFINITION], "instructions": CONFIG["instructions"] + tools.instructions(
        ["Annual report"])}
    documents = [{"id": str(report.pk), "title": report.title, "tokens": report.tokens, "sha256": report.sha256,
                  "mode": "search"}]
    client, session = await start_call(sim, alice, config=config, documents=documents)
    await until(lambda: call_of(session).context_ready_at)
    # A searched document is not put into the call whole.
    assert not [i for i in sim.state.calls[client.call_id].detail()["items"] if i.get("type") == "message"]
    await sim_post(sim, f"/_sim/calls/{client.call_id}/script",
                   {"user_transcript": "What is the rollout code for Tangerine?"})
    client.mic.speak(1000)
    await asyncio.sleep(1.3)
    client.send({"type": "input_audio_buffer.commit"})
    client.send({"type": "response.create"})
    call = await until(lambda: ToolCall.objects.filter(session=session).exclude(answer_item_id="").first(), timeout=20)
    assert call.query == "What is the rollout code for Tangerine" and "TANGERINE-7" in call.output
    answer = await until(lambda: TranscriptEntry.objects.filter(session=session, item_id=call.answer_item_id)
                         .exclude(text="").first())
    assert "TANGERINE-7" in answer.text and answer.response_id == call.answer_response_id
    sources = await database_sync_to_async(lambda: list(Source.objects.filter(tool_call=call)))()
    assert "TANGERINE-7" in sources[0].text and sources[0].section == "Chapter 4"
    # The server answered the call from its sideband, once, then asked for the answer; the page never did.
    detail = sim.state.calls[client.call_id].detail()
    sent = [(src, e["type"], e.get("item", {}).get("type")) for e, src in
            zip(detail["client_events"], detail["client_event_sources"]) if src == "sideband"]
    assert sent.count(("sideband", "conversation.item.create", "function_call_output")) == 1
    assert ("sideband", "response.create", None) in sent
    assert not [e for e, src in zip(detail["client_events"], detail["client_event_sources"])
                if src == "datachannel" and e.get("item", {}).get("type") == "function_call_output"]
    await client.close()


async def test_a_call_started_in_this_process_is_watched_by_its_own_worker_without_a_claim(sim, alice, monkeypatch):
    """With the worker inside the web process, a start leases the new call to it in the call's own insert
    and hands it the row: no wake-up through the channel layer, no claim, no read of the call."""
    from django.test import AsyncClient

    from sessions_app import sideband

    woken, loads = [], []

    async def wake_workers(pk):
        woken.append(pk)

    monkeypatch.setattr(sideband, "wake_workers", wake_workers)
    load = CallWatch.load
    monkeypatch.setattr(CallWatch, "load", lambda self: loads.append(self.pk) or load(self))
    stop = asyncio.Event()
    own = SidebandWorker(name="own", poll_seconds=60, local=True)
    task = asyncio.create_task(own.run(stop))
    await asyncio.sleep(0.2)  # its first look at the database is behind it; the next is a minute away

    browser = RtcClient()
    client = AsyncClient()
    await client.aforce_login(alice)
    response = await client.post("/api/sessions/", {"sdp": await browser.offer(), "turn_detection": "push_to_talk"},
                                 content_type="application/json")
    assert response.status_code == 201, response.content
    await browser.accept(response.json()["sdp"])
    session = await RealtimeSession.objects.aget(pk=response.json()["id"])
    call = await until(lambda: (c := call_of(session)).sideband_attached_at and c)
    assert call.sideband_owner == "own" and call.sideband_lease_until > timezone.now()
    assert list(own.watching) == [call.pk]
    assert woken == [] and loads == []
    await browser.close()
    stop.set()
    await task
    assert woken == [call.pk]  # stopping, it gave the call back and woke the others to take it


def _calls_leased(user, count, owner="", lease_until=None):
    session = RealtimeSession.objects.create(
        user=user, team=user.memberships.get().team, model="gpt-realtime", voice="marin",
        turn_detection="push_to_talk", instructions="", session_config=CONFIG, connected_at=timezone.now())
    return [Call.objects.create(session=session, number=n + 1, call_id=f"rtc_lease{session.pk}_{n}",
                                sideband_owner=owner, sideband_lease_until=lease_until).pk for n in range(count)]


@pytest.mark.parametrize("watched", [3, 60])
def test_a_poll_claims_the_free_calls_and_takes_back_a_lapsed_one_of_its_own_without_watching_it_twice(
        alice, watched):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    worker = SidebandWorker(name="poll-worker")
    now = timezone.now()
    held = _calls_leased(alice, watched, "poll-worker", now + datetime.timedelta(minutes=5))
    lapsed = _calls_leased(alice, 1, "poll-worker", now - datetime.timedelta(seconds=1))
    free = _calls_leased(alice, 2)
    others = _calls_leased(alice, 1, "other-worker", now + datetime.timedelta(minutes=5))
    worker.watching = dict.fromkeys(held + lapsed)
    with CaptureQueriesContext(connection) as queries:
        claimed = worker.claim()
    assert sorted(claimed) == sorted(free)  # the lapsed one of its own is not handed out to watch again
    leases = dict(Call.objects.values_list("pk", "sideband_owner"))
    assert all(leases[pk] == "poll-worker" for pk in held + lapsed + free)
    assert leases[others[0]] == "other-worker"
    assert Call.objects.get(pk=lapsed[0]).sideband_lease_until > now  # taken back: its lease runs again
    # The look for claimable calls does not list the watched calls: its SQL is the same at 3 and at 60.
    look = queries.captured_queries[0]["sql"]
    assert " IN (" not in look.upper()
    assert len(queries) == 1 + len(free) + len(lapsed)


@pytest.mark.parametrize("watched", [3, 60])
def test_a_lease_renewal_names_no_call_unless_one_it_watches_is_no_longer_running(alice, watched):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    lease = datetime.timedelta(seconds=30)
    soon = timezone.now() + datetime.timedelta(seconds=5)
    held = _calls_leased(alice, watched, "renewer", soon)
    theirs = _calls_leased(alice, 1, "other-worker", soon)
    with CaptureQueriesContext(connection) as queries:
        owned, ended = Call.objects.renew("renewer", held, lease)
    assert owned == set(held) and ended == {}
    assert all(" IN (" not in q["sql"].upper() for q in queries.captured_queries)  # the same SQL at 3 and 60
    leases = dict(Call.objects.values_list("pk", "sideband_lease_until"))
    assert all(leases[pk] > soon for pk in held) and leases[theirs[0]] == soon
    # One of its calls ended, and another worker took one over: only those two are read by id.
    Call.objects.get(pk=held[0]).end(EndReason.USER)
    Call.objects.filter(pk=held[1]).update(sideband_owner="other-worker")
    owned, ended = Call.objects.renew("renewer", held, lease)
    assert owned == set(held) - {held[1]} and set(ended) == {held[0]} and ended[held[0]][0] == EndReason.USER


async def test_a_running_call_leased_to_the_worker_that_it_does_not_watch_is_watched_at_the_renewal(alice, monkeypatch):
    worker = SidebandWorker(name="renewer")
    pks = await database_sync_to_async(_calls_leased)(alice, 2, "renewer", timezone.now() + datetime.timedelta(seconds=30))
    watched = []
    monkeypatch.setattr(worker, "watch", lambda pk, row=None: watched.append(pk))
    await worker.renew()
    assert sorted(watched) == sorted(pks)


# ---- the search tool's answers, with the watch driven by hand ----

class FakeSocket:
    """Stands in for the sideband's WebSocket: gives the watch these events, keeps what it sends."""

    def __init__(self, *events):
        self.events = list(events)
        self.sent = []

    async def send_str(self, text):
        self.sent.append(json.loads(text))

    async def __aiter__(self):
        for event in self.events:
            yield type("Message", (), {"type": type("Kind", (), {"name": "TEXT"}), "data": json.dumps(event)})

    def creates(self):
        return [e for e in self.sent if e["type"] == "response.create"]

    def outputs(self):
        return [e["item"]["call_id"] for e in self.sent if e.get("item", {}).get("type") == "function_call_output"]


async def tool_watch(user, documents=(), call_id="rtc_tools"):
    """A watch of a new call of a conversation searching these documents, its socket a FakeSocket."""
    documents = [{"id": str(d.pk), "title": d.title, "tokens": d.tokens, "sha256": d.sha256, "mode": "search"}
                 for d in documents]
    session = await make_session(user, call_id, "secret", documents=documents)
    watch = CallWatch(None, (await database_sync_to_async(call_of)(session)).pk)
    watch.info = await database_sync_to_async(watch.load)()
    watch.info["context_ready_at"] = True  # nothing to put in
    return watch, session


async def attach(watch, *events):
    """One attach of the watch: it listens to these events, then the socket drops."""
    watch.ws = FakeSocket(*events)
    await watch.listen(watch.ws, [])
    return watch.ws


def created(response_id, metadata=None):
    return {"type": "response.created", "response": {"id": response_id, "metadata": metadata}}


def searched(response_id, call_id, query="rollout code Tangerine"):
    return {"type": "response.function_call_arguments.done", "response_id": response_id, "call_id": call_id,
            "name": "search_documents", "arguments": json.dumps({"query": query})}


def done(response_id, *spoken, status="completed"):
    output = [{"id": item, "type": "message", "role": "assistant"} for item in spoken]
    return {"type": "response.done", "response": {"id": response_id, "status": status, "output": output}}


def asked(ws, number=-1):
    """The metadata of a response.create the watch sent, as the upstream echoes it in response.created."""
    return ws.creates()[number]["response"]["metadata"]


async def feed(watch, *events):
    """More events on the socket the watch is attached by."""
    for event in events:
        await watch.handle(event)


async def test_a_batch_whose_answers_all_failed_is_still_answered_and_the_next_search_too(alice, monkeypatch):
    """The database down through every retry: the model is told the documents cannot be searched, and asked to
    answer; its answer starting clears the ask, so the next search is answered and followed by an answer too
    (an all-failed batch once left the ask pending for ever and the model silent after every later search)."""
    from sessions_app import sideband, tools

    monkeypatch.setattr(sideband, "BACKOFF_FIRST", 0.001)
    real = tools.answer

    def down(*args, **kwargs):
        raise OperationalError("the database is away")

    monkeypatch.setattr(tools, "answer", down)
    watch, session = await tool_watch(alice)
    ws = await attach(watch, created("resp_1"), searched("resp_1", "call_1"), done("resp_1"))
    assert ws.outputs() == ["call_1"] and len(ws.creates()) == 1
    monkeypatch.setattr(tools, "answer", real)
    await feed(watch, created("resp_2", asked(ws)), done("resp_2", "item_sorry"))
    await feed(watch, created("resp_3"), searched("resp_3", "call_2"), done("resp_3"))
    assert ws.outputs() == ["call_1", "call_2"] and len(ws.creates()) == 2
    await feed(watch, created("resp_4", asked(ws)), done("resp_4", "item_answer"))
    call = await ToolCall.objects.aget(session=session, function_call_id="call_2")
    assert (call.answer_response_id, call.answer_item_id) == ("resp_4", "item_answer")


async def test_an_answer_after_two_searches_in_a_row_has_both_searches_sources(alice):
    """The response asked to answer the first search searched again instead: the answer that follows the
    second is for both, and gets both searches' sources (the first's were lost)."""
    from sessions_app.tools import sources_by_item
    from tests.test_tools import REPORT, make

    report = await database_sync_to_async(make)(alice, "Annual report", REPORT)
    watch, session = await tool_watch(alice, [report])
    ws = await attach(watch, created("resp_1"), searched("resp_1", "call_1"), done("resp_1"))
    await feed(watch, created("resp_2", asked(ws)), searched("resp_2", "call_2", "Chapter 2"), done("resp_2"))
    assert ws.outputs() == ["call_1", "call_2"] and len(ws.creates()) == 2
    await feed(watch, created("resp_3", asked(ws)), done("resp_3", "item_answer"))
    calls = await database_sync_to_async(list)(ToolCall.objects.filter(session=session).values_list(
        "function_call_id", "answer_response_id", "answer_item_id"))
    assert calls == [("call_1", "resp_3", "item_answer"), ("call_2", "resp_3", "item_answer")]
    sources = (await database_sync_to_async(sources_by_item)(session))["item_answer"]
    kept = await database_sync_to_async(list)(Source.objects.filter(tool_call__session=session).values_list(
        "tool_call__function_call_id", flat=True))
    assert len(sources) == len(kept) and {"call_1", "call_2"} <= set(kept)
    assert any("TANGERINE-7" in s["text"] for s in sources)


async def test_after_a_reattach_the_outputs_of_a_response_never_seen_done_are_sent_and_answered(alice):
    """The sideband dropped after a search was answered but before its response ended: the response's
    response.done was missed. The same watch attaches again: it sends the outputs and asks for the answer,
    and later searches are answered too (the missed response, kept as running, once blocked every ask)."""
    watch, session = await tool_watch(alice)
    first = await attach(watch, created("resp_1"), searched("resp_1", "call_1"))
    assert first.sent == []  # its response has not ended
    ws = await attach(watch)
    assert ws.outputs() == ["call_1"] and len(ws.creates()) == 1
    # The ask met a response running since the reattach (one the watch never saw start): it is asked
    # again when that one ends.
    await feed(watch, {"type": "error", "error": {"code": "conversation_already_has_active_response",
                                                  "event_id": ws.creates()[0]["event_id"]}},
               done("resp_unseen"))
    assert len(ws.creates()) == 2 and asked(ws) != asked(ws, 0)
    await feed(watch, created("resp_2", asked(ws)), done("resp_2", "item_answer"))
    call = await ToolCall.objects.aget(session=session, function_call_id="call_1")
    assert call.answer_item_id == "item_answer"
    # A search after the reattach is answered too.
    await feed(watch, created("resp_3"), searched("resp_3", "call_2"), done("resp_3"))
    assert ws.outputs() == ["call_1", "call_2"] and len(ws.creates()) == 3


async def test_an_ask_whose_start_was_missed_in_a_drop_does_not_block_the_next(alice):
    """The watch asked for an answer and the sideband dropped before the response started: after the
    reattach, what the missed events would have cleared (the ask, the running response) is forgotten."""
    watch, session = await tool_watch(alice)
    first = await attach(watch, created("resp_1"), searched("resp_1", "call_1"), done("resp_1"))
    assert len(first.creates()) == 1
    ws = await attach(watch, created("resp_2"), searched("resp_2", "call_2"), done("resp_2"))
    assert ws.outputs() == ["call_2"] and len(ws.creates()) == 1


async def test_an_event_the_watch_fails_on_is_logged_and_the_next_is_handled(alice, monkeypatch, caplog):
    """One event that raises something unexpected ends neither the listening nor the watch; a connection
    broken under a send is still a drop, for the attach to handle."""
    import aiohttp

    async def police_session(self, session):
        raise UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(CallWatch, "police_session", police_session)
    watch, session = await tool_watch(alice)
    ws = await attach(watch, {"type": "session.updated", "session": {}}, created("resp_1"),
                      searched("resp_1", "call_1"), done("resp_1"))
    assert ws.outputs() == ["call_1"] and len(ws.creates()) == 1
    assert "session.updated" in caplog.text and "UnicodeEncodeError" in caplog.text

    async def broken(self, text):
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")

    monkeypatch.setattr(FakeSocket, "send_str", broken)
    with pytest.raises(aiohttp.ClientConnectionResetError):
        await attach(watch, created("resp_2"), searched("resp_2", "call_2"), done("resp_2"))


def test_a_resumed_call_gets_only_the_documents_the_user_may_still_read(alice, bob):
    """A document made private by its owner since the conversation began, or one the user can no longer
    read at all, is not put into the next call; the model is told it is no longer available, as the
    search tool says it."""
    from tests.test_tools import make

    shared = make(alice, "Shared plan", "Zephyr launches in March.")
    private = make(alice, "Salaries", "Alice earns a great deal.")
    session = RealtimeSession.objects.create(
        user=bob, team=bob.memberships.get().team, model="gpt-realtime", voice="marin", turn_detection="push_to_talk",
        instructions="x", session_config=CONFIG, documents=[
            {"id": str(d.pk), "title": d.title, "tokens": d.tokens, "sha256": d.sha256} for d in (shared, private)])
    Call.objects.create(session=session, number=1, call_id="rtc_first", status="ended")
    second = Call.objects.create(session=session, number=2, call_id="rtc_second")
    Document.objects.filter(pk=private.pk).update(visibility="private")
    watch = CallWatch(None, second.pk)
    watch.info = watch.load()
    texts = [e["item"]["content"][0]["text"] for e in watch.context_events()]
    assert any("Zephyr launches in March." in t for t in texts)
    assert not any("earns" in t for t in texts)
    assert any("“Salaries” is no longer available" in t for t in texts)
    # A member who left the team reads none of them.
    bob.memberships.all().delete()
    texts = [e["item"]["content"][0]["text"] for e in watch.context_events()]
    assert not any("Zephyr" in t or "earns" in t for t in texts)
    assert any("“Shared plan” is no longer available" in t and "“Salaries”" in t for t in texts)


async def test_an_answer_cut_off_whose_text_the_upstream_dropped_keeps_its_text_marked_cut(alice):
    """The API's reference says truncating an answer removes its transcript: the read-back then has none,
    and storing it emptied the answer in the transcript. Its text stays, marked where the audio stopped;
    a read-back that has the heard part is stored as it is."""
    watch, session = await tool_watch(alice)
    await attach(
        watch,
        {"type": "conversation.item.added", "item": {"id": "item_cut", "type": "message", "role": "assistant"}},
        {"type": "response.output_audio_transcript.done", "item_id": "item_cut", "transcript": "One two three four."},
        {"type": "conversation.item.truncated", "item_id": "item_cut", "content_index": 0, "audio_end_ms": 1500},
        {"type": "conversation.item.retrieved", "item": {
            "id": "item_cut", "type": "message", "role": "assistant",
            "content": [{"type": "output_audio", "transcript": None}]}},
        {"type": "conversation.item.added", "item": {"id": "item_heard", "type": "message", "role": "assistant"}},
        {"type": "response.output_audio_transcript.done", "item_id": "item_heard", "transcript": "Five six seven."},
        {"type": "conversation.item.truncated", "item_id": "item_heard", "content_index": 0, "audio_end_ms": 700},
        {"type": "conversation.item.retrieved", "item": {
            "id": "item_heard", "type": "message", "role": "assistant",
            "content": [{"type": "output_audio", "transcript": "Five six"}]}},
    )
    texts = dict(await database_sync_to_async(list)(
        TranscriptEntry.objects.filter(session=session).values_list("item_id", "text")))
    assert texts == {"item_cut": "One two three four. [cut off after 1.5 s]", "item_heard": "Five six"}
    assert [e["item_id"] for e in watch.ws.sent if e["type"] == "conversation.item.retrieve"] == [
        "item_cut", "item_heard"]


async def test_an_answer_cut_off_keeps_its_text_against_an_upstream_that_removes_it(sim, alice, worker):
    """The same against the simulator, set to remove the whole transcript on truncate as the API reference
    says the API does."""
    sim.state.config.update({"truncate_transcript": "removed"})
    client, session = await start_call(sim, alice)
    await until(lambda: call_of(session).sideband_attached_at)
    done = await ask(client)
    item_id = done["response"]["output"][0]["id"]
    spoken = await until(lambda: TranscriptEntry.objects.filter(session=session, item_id=item_id).exclude(
        text="").values_list("text", flat=True).first())
    client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 1200})
    await client.wait_for("conversation.item.truncated", timeout=10)
    marked = await until(lambda: TranscriptEntry.objects.filter(
        session=session, item_id=item_id, text__endswith="[cut off after 1.2 s]").first())
    assert marked.text == f"{spoken} [cut off after 1.2 s]"
    await client.close()


class DroppingSocket(FakeSocket):
    """A socket that breaks under the watch's first send (the drop comes while it resends)."""

    async def send_str(self, text):
        raise ConnectionResetError("dropped")


async def test_a_drop_while_the_answers_are_sent_again_keeps_them_for_the_next_attach(alice):
    """The reattach let go of a batch before sending it: a second drop under the send lost its outputs and
    its ask for good, and the model never answered the search."""
    watch, session = await tool_watch(alice)
    await attach(watch, created("resp_1"), searched("resp_1", "call_1"))  # dropped before resp_1 ended
    watch.ws = DroppingSocket()
    with pytest.raises(ConnectionResetError):
        await watch.listen(watch.ws, [])
    ws = await attach(watch)
    assert ws.outputs() == ["call_1"] and len(ws.creates()) == 1
    # The same when the drop comes under the ask itself, once the outputs went.
    watch2, _ = await tool_watch(alice, call_id="rtc_tools_2")
    await attach(watch2, created("resp_a"), searched("resp_a", "call_a"))

    class AskBreaks(FakeSocket):
        async def send_str(self, text):
            if json.loads(text)["type"] == "response.create":
                raise ConnectionResetError("dropped")
            await super().send_str(text)

    watch2.ws = AskBreaks()
    with pytest.raises(ConnectionResetError):
        await watch2.listen(watch2.ws, [])
    ws = await attach(watch2)
    assert len(ws.creates()) == 1
