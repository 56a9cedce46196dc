"""Sideband sockets off the happy path: who may attach, injected faults, and network drops."""

from __future__ import annotations

import time

import aiohttp
import pytest

from .conftest import API_KEY
from .rtc_client import RtcClient
from .sideband_client import SidebandClient, call_detail, mint_secret

URL = "/v1/realtime"


def not_found(call_id: str) -> dict:
    return {"error": {"message": f"Call '{call_id}' not found.", "type": "invalid_request_error",
                      "code": "call_id_not_found", "param": "call_id"}}


async def _refused(sim, http, call_id: str, token: str) -> tuple[int, dict]:
    """A plain GET: refusals answer before the WebSocket upgrade, with a JSON body."""
    resp = await http.get(f"{sim.base_url}{URL}", params={"call_id": call_id},
                          headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json()


async def _attaches(sim, http, call_id: str, token: str) -> bool:
    side = await SidebandClient.attach(sim.base_url, http, call_id, token)
    created = await side.wait_for("session.created")
    assert created["session"]["id"]
    await side.ws.close()
    return True


async def _set_auth(sim, http, mode: str) -> None:
    resp = await http.post(f"{sim.base_url}/_sim/config", json={"sideband_auth": mode})
    assert resp.status == 200


async def test_sideband_auth_modes(sim, http):
    own = await mint_secret(sim.base_url, http, seconds=600)
    other = await mint_secret(sim.base_url, http, seconds=600)
    unused = await mint_secret(sim.base_url, http, seconds=600)
    browser, other_browser, server_made = RtcClient(), RtcClient(), RtcClient()
    try:
        await browser.connect(sim.base_url, own)
        await other_browser.connect(sim.base_url, other)
        await server_made.connect(sim.base_url, API_KEY, multipart=True, session={"type": "realtime"})
        call = browser.call_id

        # "any": the API key or the call's own secret.
        assert await _attaches(sim, http, call, API_KEY)
        assert await _attaches(sim, http, call, own)
        for token in (other, unused):  # another call's secret, or one that made no call: refused
            assert await _refused(sim, http, call, token) == (404, not_found(call))
        # A call made with the API key has no secret of its own.
        assert await _refused(sim, http, server_made.call_id, own) == (404, not_found(server_made.call_id))
        for token in ("sk-wrong", "ek_" + "0" * 32):  # unknown bearers stay 401
            status, body = await _refused(sim, http, call, token)
            assert status == 401 and body["error"]["code"] == "invalid_api_key"

        await _set_auth(sim, http, "api_key_only")
        assert await _refused(sim, http, call, own) == (404, not_found(call))
        assert await _attaches(sim, http, call, API_KEY)

        await _set_auth(sim, http, "call_secret_only")
        assert await _refused(sim, http, call, API_KEY) == (404, not_found(call))
        assert await _refused(sim, http, server_made.call_id, API_KEY) == (404, not_found(server_made.call_id))
        assert await _attaches(sim, http, call, own)
        assert await _refused(sim, http, call, other) == (404, not_found(call))

        detail = await call_detail(sim.base_url, http, call)
        assert [a["auth"] for a in detail["sideband_attaches"]] == ["api_key", "call_secret", "api_key",
                                                                    "call_secret"]
        stamps = [a["at_ms"] for a in detail["sideband_attaches"]]
        assert stamps == sorted(stamps) and detail["created_at_ms"] <= stamps[0]
        assert detail["sideband_refusals"] == 5  # unknown bearers (401) are not counted
        assert (await call_detail(sim.base_url, http, server_made.call_id))["sideband_refusals"] == 2

        # The own secret attaches only while it is valid; expired, it is an expired key (401).
        await http.post(f"{sim.base_url}/_sim/clock", json={"advance_s": 601})
        status, body = await _refused(sim, http, call, own)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        await http.post(f"{sim.base_url}/_sim/reset")
        assert (await (await http.get(f"{sim.base_url}/_sim/config")).json())["sideband_auth"] == "any"
    finally:
        for client in (browser, other_browser, server_made):
            await client.close()


async def _hangup(sim, http, call_id: str, token: str) -> tuple[int, dict]:
    resp = await http.post(f"{sim.base_url}/v1/realtime/calls/{call_id}/hangup",
                           headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json()


async def test_hangup_auth_modes(sim, http):
    """hangup_auth takes the sideband's three modes; a credential it refuses is told the call does not exist."""
    own = await mint_secret(sim.base_url, http, seconds=600)
    other = await mint_secret(sim.base_url, http, seconds=600)
    browsers = [RtcClient() for _ in range(4)]
    try:
        for browser in browsers:
            await browser.connect(sim.base_url, own)
        keyed, secreted, either, expired = (b.call_id for b in browsers)

        # "api_key_only", the default (the documented rule): the call's own secret is refused like a stranger's.
        for token in (own, other):
            assert await _hangup(sim, http, keyed, token) == (404, not_found(keyed))
        assert await _hangup(sim, http, keyed, API_KEY) == (200, {})

        await http.post(f"{sim.base_url}/_sim/config", json={"hangup_auth": "call_secret_only"})
        for token in (API_KEY, other):
            assert await _hangup(sim, http, secreted, token) == (404, not_found(secreted))
        detail = await call_detail(sim.base_url, http, secreted)
        assert detail["state"] != "closed" and not detail["hungup"]  # refused: the call runs on
        assert await _hangup(sim, http, secreted, own) == (200, {})

        await http.post(f"{sim.base_url}/_sim/config", json={"hangup_auth": "any"})
        assert await _hangup(sim, http, either, other) == (404, not_found(either))
        assert await _hangup(sim, http, either, own) == (200, {})
        assert await _hangup(sim, http, "rtc_nope", own) == (404, not_found("rtc_nope"))
        status, body = await _hangup(sim, http, either, "sk-wrong")  # unknown bearers stay 401
        assert status == 401 and body["error"]["code"] == "invalid_api_key"

        summaries = {c["id"]: c for c in await (await http.get(f"{sim.base_url}/_sim/calls")).json()}
        assert [(summaries[c]["hungup_with"], summaries[c]["hangup_refusals"], summaries[c]["end_reason"])
                for c in (keyed, secreted, either, expired)] == [
            ("api_key", 2, "hangup"), ("call_secret", 2, "hangup"), ("call_secret", 1, "hangup"), (None, 0, None)]

        # The own secret hangs up only while it is valid; expired, it is an expired key (401).
        await http.post(f"{sim.base_url}/_sim/config", json={"hangup_auth": "call_secret_only"})
        await http.post(f"{sim.base_url}/_sim/clock", json={"advance_s": 601})
        status, body = await _hangup(sim, http, expired, own)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert (await call_detail(sim.base_url, http, expired))["state"] != "closed"
        await http.post(f"{sim.base_url}/_sim/reset")
        assert (await (await http.get(f"{sim.base_url}/_sim/config")).json())["hangup_auth"] == "api_key_only"
    finally:
        for browser in browsers:
            await browser.close()


async def test_sideband_faults(sim, http):
    client = RtcClient()
    try:
        await client.connect(sim.base_url, API_KEY)
        call = client.call_id
        faults = f"{sim.base_url}/_sim/faults"

        assert (await http.post(faults, json={"endpoint": "sideband", "status": 503, "count": 2})).status == 200
        status, body = await _refused(sim, http, call, API_KEY)
        assert status == 503 and set(body["error"]) == {"message", "type", "param", "code"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await SidebandClient.attach(sim.base_url, http, call)
        assert refused.value.status == 503
        assert await _attaches(sim, http, call, API_KEY)  # count used up

        await http.post(faults, json={"endpoint": "sideband", "latency_ms": 300, "count": 1})
        start = time.monotonic()
        assert await _attaches(sim, http, call, API_KEY)
        assert time.monotonic() - start >= 0.3

        await http.post(faults, json={"endpoint": "sideband", "drop": True, "count": 1})
        dropped = await SidebandClient.attach(sim.base_url, http, call)  # the handshake succeeds...
        ending = await dropped.wait_end()
        assert ending.type != aiohttp.WSMsgType.CLOSE and dropped.events == []  # ...then the line goes dead
        assert await _attaches(sim, http, call, API_KEY)

        await http.post(faults, json={"endpoint": "*", "status": 429, "count": 1})
        with pytest.raises(aiohttp.WSServerHandshakeError) as limited:
            await SidebandClient.attach(sim.base_url, http, call)
        assert limited.value.status == 429
        detail = await call_detail(sim.base_url, http, call)
        assert len(detail["sideband_attaches"]) == 3 and detail["state"] == "active"
    finally:
        await client.close()


async def test_dropping_the_sidebands_leaves_the_call_running(sim, http):
    client = RtcClient()
    try:
        await client.connect(sim.base_url, API_KEY)
        call = client.call_id
        sides = [await SidebandClient.attach(sim.base_url, http, call) for _ in range(2)]
        for side in sides:
            await side.wait_for("session.created")
        resp = await http.post(f"{sim.base_url}/_sim/calls/{call}/sideband/drop")
        assert resp.status == 200 and await resp.json() == {"dropped": 2}
        for side in sides:
            ending = await side.wait_end()
            assert ending.type == aiohttp.WSMsgType.CLOSED  # no close frame: an abnormal closure
            assert side.ws.close_code == 1006

        detail = await call_detail(sim.base_url, http, call)
        assert detail["state"] == "active" and detail["sidebands"] == 0 and detail["end_reason"] is None
        client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "still here"}]}})
        await client.wait_for("conversation.item.added")
        # The server reconnects and carries on.
        again = await SidebandClient.attach(sim.base_url, http, call)
        await again.wait_for("session.created")
        await again.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await again.wait_for("response.done")
        await client.wait_for("response.done", lambda e: e["response"]["id"] == done["response"]["id"])
        assert all(side.events[-1]["type"] == "session.created" for side in sides)  # nothing after the drop

        empty = await http.post(f"{sim.base_url}/_sim/calls/{call}/sideband/drop")
        assert await empty.json() == {"dropped": 1}
        missing = await http.post(f"{sim.base_url}/_sim/calls/rtc_nope/sideband/drop")
        assert missing.status == 404
    finally:
        await client.close()
