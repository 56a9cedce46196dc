"""Two server processes sharing the machine's PostgreSQL and Redis on 127.0.0.1.

Run outside the browser tests' network namespace (which has its own loopback);
PostgreSQL or Redis missing is a failure, not a skip.
"""

import asyncio
import json
import time

import aiohttp
import pytest

from bench.harness import simulator, topology
from bench.mint import signed_in_client
from realtime_sim.tests.rtc_client import RtcClient

pytestmark = pytest.mark.scaleout

USAGE = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
         "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "image_tokens": 0, "cached_tokens": 64,
                                 "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0}},
         "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}


@pytest.fixture(scope="module")
def shared():
    with simulator() as sim, topology(sim, users=2, processes=2, shared=True, worker=True) as top:
        yield sim, top


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
    session = (await member.post("/api/sessions/", json={})).json()
    async with aiohttp.ClientSession() as http:
        dashboard = await socket(http, b, "/ws/dashboard/", staff)
        usage = await socket(http, a, session["usage_ws"], member)
        await usage.send_json({"type": "usage.report", "response_id": "resp_cross_1", "usage": USAGE})
        ack = await receive(usage, "usage.ack")
        update = await receive(dashboard, "spend.update")
        assert update["session_id"] == session["id"] and update["response_id"] == "resp_cross_1"
        assert update["cost_usd"] == ack["cost_usd"] == "0.007206"
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
    assert detail["totals"]["cost_usd"] == "0.014411"
    await member.aclose()
    await staff.aclose()


async def test_a_session_minted_on_one_process_is_verified_by_the_sideband_worker(shared):
    sim, top = shared
    a, b = top.bases
    member = await signed_in_client(a, "bench1")
    minted = (await member.post("/api/sessions/", json={"turn_detection": "push_to_talk"})).json()
    browser = RtcClient()
    await browser.connect(sim, minted["client_secret"])
    other = await signed_in_client(b, "bench1")
    assert (await other.post(f"/api/sessions/{minted['id']}/call", json={"call_id": browser.call_id})).status_code == 204
    # Give the worker time to claim the call and open its sideband before the answer.
    await asyncio.sleep(1.0)
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
