"""Calls the product's server creates: the duration cap, end reasons, several calls per secret,
and what /_sim records about who created and attached to a call."""

from __future__ import annotations

import json
import time

import aiohttp

from realtime_sim import start_simulator

from .conformance import check_server_events
from .conftest import API_KEY
from .rtc_client import RtcClient
from .sideband_client import SidebandClient, call_detail, mint_secret, wait_until

EXPIRED_ERROR = {
    "type": "invalid_request_error",
    "code": "session_expired",
    "message": "Your session hit the maximum duration of 60 minutes.",
    "param": None,
    "event_id": None,
}


async def test_a_call_ends_at_the_duration_cap(sim, http):
    await http.post(f"{sim.base_url}/_sim/config", json={"call_max_seconds": 2})
    secret = await mint_secret(sim.base_url, http)
    client = RtcClient()
    try:
        before_ms = time.time() * 1000
        await client.connect(sim.base_url, secret)
        connected = time.monotonic()
        # The cap is fixed when the call is made: raising it now does not save this call.
        await http.post(f"{sim.base_url}/_sim/config", json={"call_max_seconds": 3600})
        side = await SidebandClient.attach(sim.base_url, http, client.call_id)
        await side.wait_for("session.created")
        detail = await call_detail(sim.base_url, http, client.call_id)
        assert before_ms <= detail["created_at_ms"] <= time.time() * 1000
        expires_at = client.events[0]["session"]["expires_at"]
        assert expires_at == int(detail["created_at_ms"] / 1000 + 2)
        assert detail["end_reason"] is None and detail["ended_at_ms"] is None

        expired = await client.wait_for("error", timeout=5)
        assert 1.5 <= time.monotonic() - connected <= 3.0
        assert expired["error"] == EXPIRED_ERROR
        assert client.types() == ["session.created", "error"]  # no warning before it
        side_expired = await side.wait_for("error")
        assert side_expired == expired  # the same event on every connection
        ending = await side.wait_end()
        assert ending.type == aiohttp.WSMsgType.CLOSE and ending.data == 1000  # a normal close frame
        assert side.types() == ["session.created", "error"]

        await wait_until(lambda: client.channel.readyState == "closed", what="data channel closed")
        await wait_until(lambda: client.pc.connectionState in ("closed", "failed"), what="peer closed")
        detail = await call_detail(sim.base_url, http, client.call_id)
        assert detail["state"] == "closed" and detail["hungup"] is False
        assert detail["end_reason"] == "session_expired"
        assert 1900 <= detail["ended_at_ms"] - detail["created_at_ms"] <= 3000
        assert detail["sidebands"] == 0
        check_server_events(client.events + side.events)
        late = await http.get(f"{sim.base_url}/v1/realtime", params={"call_id": client.call_id},
                              headers={"Authorization": f"Bearer {API_KEY}"})
        assert late.status == 404
    finally:
        await client.close()


async def test_one_secret_starts_several_calls_and_calls_record_their_origin(sim, http):
    secret = await mint_secret(sim.base_url, http, seconds=60)
    first, second, server_made = RtcClient(), RtcClient(), RtcClient()
    try:
        before_ms = time.time() * 1000
        resp1 = await first.connect(sim.base_url, secret, origin="http://127.0.0.1:8000",
                                    headers={"User-Agent": "FakeBrowser/1.0"})
        resp2 = await second.connect(sim.base_url, secret, headers={"User-Agent": "ProductServer/2.0"})
        assert resp1.status == resp2.status == 201
        assert first.call_id != second.call_id
        await server_made.connect(sim.base_url, API_KEY, multipart=True, session={"type": "realtime"},
                                  headers={"User-Agent": "ProductServer/2.0"})
        after_ms = time.time() * 1000

        calls = {c["id"]: c for c in await (await http.get(f"{sim.base_url}/_sim/calls")).json()}
        assert set(calls) == {first.call_id, second.call_id, server_made.call_id}
        assert calls[first.call_id]["created_by"] == {
            "auth": "ephemeral", "user_agent": "FakeBrowser/1.0", "origin": "http://127.0.0.1:8000",
            "content_type": "application/sdp"}
        assert calls[second.call_id]["created_by"] == {
            "auth": "ephemeral", "user_agent": "ProductServer/2.0", "origin": None,
            "content_type": "application/sdp"}
        assert calls[server_made.call_id]["created_by"] == {
            "auth": "api_key", "user_agent": "ProductServer/2.0", "origin": None,
            "content_type": "multipart/form-data"}
        for call in calls.values():
            assert isinstance(call["created_at_ms"], float) and before_ms <= call["created_at_ms"] <= after_ms
            assert call["sideband_attaches"] == [] and call["sideband_refusals"] == 0
            assert call["end_reason"] is None and call["ended_at_ms"] is None

        hang = await http.post(f"{sim.base_url}/v1/realtime/calls/{first.call_id}/hangup",
                               headers={"Authorization": f"Bearer {API_KEY}"})
        assert hang.status == 200
        await second.close()  # the browser goes away
        await wait_until(lambda: _ended(sim, http, second.call_id), what="peer-closed call to end")
        detail = await call_detail(sim.base_url, http, first.call_id)
        assert detail["end_reason"] == "hangup" and detail["ended_at_ms"] >= detail["created_at_ms"]
        assert (await call_detail(sim.base_url, http, second.call_id))["end_reason"] == "peer_closed"
        assert (await call_detail(sim.base_url, http, server_made.call_id))["end_reason"] is None
        # ...until the secret expires.
        await http.post(f"{sim.base_url}/_sim/clock", json={"advance_s": 61})
        late = await http.post(f"{sim.base_url}/v1/realtime/calls", data="v=0\r\nm=audio 9 x 0\r\n",
                               headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/sdp"})
        assert late.status == 401

        # Neither the secret nor the key is ever recorded.
        views = [await (await http.get(f"{sim.base_url}/_sim/calls")).json(),
                 await (await http.get(f"{sim.base_url}/_sim/state")).json()]
        views += [await call_detail(sim.base_url, http, c) for c in calls]
        text = json.dumps(views)
        assert secret not in text and API_KEY not in text and secret[3:] not in text
    finally:
        for client in (first, second, server_made):
            await client.close()


async def _ended(sim, http, call_id: str) -> bool:
    return (await call_detail(sim.base_url, http, call_id))["end_reason"] is not None


async def test_call_times_follow_an_injected_clock(http):
    sim = await start_simulator("127.0.0.1", 0, api_key=API_KEY, clock=lambda: 1_700_000_000)
    client = RtcClient()
    try:
        await client.connect(sim.base_url, API_KEY)
        assert client.events[0]["session"]["expires_at"] == 1_700_000_000 + 3600
        detail = await call_detail(sim.base_url, http, client.call_id)
        assert detail["created_at_ms"] == 1_700_000_000_000.0 and isinstance(detail["created_at_ms"], float)
        assert detail["created_at"] == 1_700_000_000
    finally:
        await client.close()
        await sim.stop()
