"""Two server processes sharing the machine's PostgreSQL and Redis on 127.0.0.1.

Run outside the browser tests' network namespace (which has its own loopback);
PostgreSQL or Redis missing is a failure, not a skip.
"""

import asyncio
from decimal import Decimal
import json
import os
import signal
import time
import urllib.request

import aiohttp
import pytest

from bench.harness import simulator, topology
from bench.harness import signed_in_client
from realtime_sim.tests.rtc_client import RtcClient

pytestmark = pytest.mark.scaleout

USAGE = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
         "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "image_tokens": 0, "cached_tokens": 64,
                                 "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0}},
         "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}


@pytest.fixture(scope="module")
def shared():
    with simulator() as sim, topology(sim, users=2, processes=2, shared=True, workers=2) as top:
        yield sim, top


async def start(client, body=None):
    """What the page does: an offer from a real peer, the server creates the call, the peer applies the answer."""
    browser = RtcClient()
    response = await client.post("/api/sessions/", json={**(body or {}), "sdp": await browser.offer()})
    assert response.status_code == 201, response.text
    minted = response.json()
    await browser.accept(minted["sdp"])
    return browser, minted


def sim_call(sim, call_id):
    with urllib.request.urlopen(f"{sim}/_sim/calls/{call_id}", timeout=5) as response:
        return json.loads(response.read())


async def eventually(predicate, timeout=20, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(interval)


async def socket(http, base, path, client):
    cookie = f"sessionid={client.cookies['sessionid']}"
    return await http.ws_connect(base.replace("http", "ws", 1) + path,
                                 headers={"Cookie": cookie, "Origin": base})


async def receive(ws, kind, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        message = await asyncio.wait_for(ws.receive_json(), max(0.01, deadline - time.monotonic()))
        if message.get("type") == kind:
            return message


async def test_a_report_to_one_process_reaches_a_dashboard_on_the_other(shared):
    _, top = shared
    a, b = top.bases
    member, staff = await signed_in_client(a, "bench0"), await signed_in_client(b, "benchstaff")
    browser, session = await start(member)
    async with aiohttp.ClientSession() as http:
        dashboard = await socket(http, b, "/ws/dashboard/", staff)
        usage = await socket(http, a, session["usage_ws"], member)
        await usage.send_json({"type": "usage.report", "response_id": "resp_cross_1", "usage": USAGE})
        ack = await receive(usage, "usage.ack")
        update = await receive(dashboard, "spend.update")
        assert update["session_id"] == session["id"] and update["response_id"] == "resp_cross_1"
        # The update is what the dashboard adds: this record's part of its day.
        (day,) = update["changes"]
        assert Decimal(day["cost_usd"]) == Decimal(ack["cost_usd"])
        assert Decimal(ack["cost_usd"]).quantize(Decimal("0.000001")) == Decimal("0.007206")
        # Quiet sockets stay open past the channel layer's 5 s blocking wait
        # (a Redis client timeout once closed them with 1011 every 5 s).
        await asyncio.sleep(7)
        await usage.send_json({"type": "usage.report", "response_id": "resp_cross_2", "usage": USAGE})
        assert (await receive(usage, "usage.ack"))["session"]["responses"] == 2
        assert (await receive(dashboard, "spend.update"))["response_id"] == "resp_cross_2"
        await usage.close()
        await dashboard.close()
    # Process B reads what process A stored.
    detail = (await staff.get(f"/api/sessions/{session['id']}")).json()
    assert detail["totals"]["cost_usd"] == "0.01441120"
    await browser.close()
    await member.aclose()
    await staff.aclose()


async def test_a_session_minted_on_one_process_is_verified_by_the_sideband_worker(shared):
    sim, top = shared
    a, b = top.bases
    member = await signed_in_client(a, "bench1")
    browser, minted = await start(member, {"turn_detection": "push_to_talk"})
    other = await signed_in_client(b, "bench1")
    call_id = (await other.get(f"/api/sessions/{minted['id']}")).json()["calls"][0]["call_id"]
    # A worker in another process was woken through Redis and attached at once.
    attaches = await eventually(lambda: sim_call(sim, call_id)["sideband_attaches"])
    created_at = sim_call(sim, call_id)["created_at_ms"]
    print(f"sideband attached {attaches[0]['at_ms'] - created_at:.0f} ms after the call was created")
    assert attaches[0]["at_ms"] - created_at < 1000
    browser.send({"type": "response.create"})
    done = await browser.wait_for("response.done", timeout=15)

    deadline = time.monotonic() + 15
    while True:
        totals = (await other.get(f"/api/sessions/{minted['id']}")).json()["totals"]
        if totals["verified"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert totals["verified"] and totals["verified_responses"] == 1
    usage = done["response"]["usage"]
    detail = (await other.get(f"/api/sessions/{minted['id']}")).json()
    server = [u for u in detail["usage"] if u["source"] == "server"]
    assert server[0]["response_id"] == done["response"]["id"]
    assert server[0]["input_tokens"] == usage["input_tokens"] and server[0]["output_tokens"] == usage["output_tokens"]
    # The browser never reported it: the session is flagged.
    assert totals["usage_mismatch"] is True
    await browser.close()
    await member.aclose()
    await other.aclose()


async def test_worker_restarts_never_end_a_live_call_and_verified_usage_resumes(shared):
    sim, top = shared
    member = await signed_in_client(top.bases[0], "bench0")
    browser, minted = await start(member, {"turn_detection": "push_to_talk"})
    call_id = (await member.get(f"/api/sessions/{minted['id']}")).json()["calls"][0]["call_id"]
    await eventually(lambda: sim_call(sim, call_id)["sideband_attaches"])

    def owner():
        rows = top.sql("SELECT sideband_owner FROM sessions_app_call WHERE call_id = %s", (call_id,))
        pid = rows[0][0].rsplit(":", 1)[-1] if rows and rows[0][0] else None
        return next((w for w in top.workers if str(w.pid) == pid and w.poll() is None), None)

    async def answer_is_verified():
        browser.send({"type": "response.create"})
        done = await browser.wait_for("response.done", timeout=15,
                                      predicate=lambda e: e["response"]["id"] not in answered)
        answered.add(done["response"]["id"])
        await eventually(lambda: top.sql(
            "SELECT 1 FROM sessions_app_usagerecord WHERE response_id = %s AND source = 'server'",
            (done["response"]["id"],)))

    answered = set()
    gaps = {}
    for how in ("SIGTERM", "kill -9"):
        worker = await eventually(owner)
        attached = len(sim_call(sim, call_id)["sideband_attaches"])
        top.start_worker()  # a fresh one stands by, as a supervisor would start
        await asyncio.sleep(1.0)
        stopped_at = time.time() * 1000
        os.kill(worker.pid, signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        worker.wait(10)
        attaches = await eventually(lambda: len(sim_call(sim, call_id)["sideband_attaches"]) > attached
                                    and sim_call(sim, call_id)["sideband_attaches"], timeout=30)
        gaps[how] = attaches[-1]["at_ms"] - stopped_at
        # The call went on all along, and so did the session.
        assert sim_call(sim, call_id)["state"] != "closed"
        status = (await member.get(f"/api/sessions/{minted['id']}")).json()
        assert status["status"] == "active" and status["calls"][0]["status"] == "active"
        await answer_is_verified()
    print(f"sideband gap after a worker SIGTERM: {gaps['SIGTERM']:.0f} ms; after kill -9: {gaps['kill -9']:.0f} ms")
    assert gaps["SIGTERM"] < 2000  # released and taken over at once
    assert gaps["kill -9"] < 15_000  # once the dead worker's lease lapses
    await browser.close()
    await member.aclose()


async def test_terminated_database_connections_do_not_kill_the_worker(shared):
    sim, top = shared
    top.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    await asyncio.sleep(1.5)
    assert all(w.poll() is None for w in top.workers if w.returncode is None)
    live = [w for w in top.workers if w.poll() is None]
    assert live, "no sideband worker survived"
    member = await signed_in_client(top.bases[1], "bench1")
    browser, minted = await start(member, {"turn_detection": "push_to_talk"})
    call_id = (await member.get(f"/api/sessions/{minted['id']}")).json()["calls"][0]["call_id"]
    await eventually(lambda: sim_call(sim, call_id)["sideband_attaches"])
    assert all(w.poll() is None for w in live)
    await browser.close()
    await member.aclose()


async def test_a_worker_that_looks_at_the_database_rarely_is_woken_through_redis():
    """The web process's wake-up (a Redis notice) alone gets new calls attached: the worker's own look at
    the database comes every 30 s, and each call is attached well before it."""
    with simulator() as sim, topology(sim, users=3, shared=True) as top:
        worker = top.start_worker(poll=30)
        # Its first look (and its subscription) is behind it once its heartbeat is in the database.
        await eventually(lambda: top.sql("SELECT count(*) FROM sessions_app_workerbeat")[0][0])
        await asyncio.sleep(0.5)
        for number in range(2):
            member = await signed_in_client(top.bases[0], f"bench{number}")
            browser, minted = await start(member, {"turn_detection": "push_to_talk"})
            call_id = (await member.get(f"/api/sessions/{minted['id']}")).json()["calls"][0]["call_id"]
            attaches = await eventually(lambda: sim_call(sim, call_id)["sideband_attaches"], timeout=10)
            assert attaches[0]["at_ms"] - sim_call(sim, call_id)["created_at_ms"] < 2000
            await browser.close()
            await member.aclose()
        assert worker.poll() is None
