"""HTTP surface: client secrets, calls, hangup, CORS, faults, controls."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest

from realtime_sim import start_simulator

from .conformance import check_client_secret_response
from .conftest import API_KEY
from .rtc_client import RtcClient

FACTS_EXAMPLE_REQUEST = {
    "expires_after": {"anchor": "created_at", "seconds": 600},
    "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "You are a friendly assistant."},
}


async def _secret(sim, http, auth, body=None, headers=None):
    resp = await http.post(f"{sim.base_url}/v1/realtime/client_secrets", json=body or FACTS_EXAMPLE_REQUEST,
                           headers={**auth, **(headers or {})})
    return resp, await resp.json()


async def test_client_secret_for_the_facts_example_conforms(sim, http, auth):
    before = int(time.time())
    resp, body = await _secret(sim, http, auth, headers={"OpenAI-Safety-Identifier": "user-hash-42"})
    assert resp.status == 200
    check_client_secret_response(body)
    assert re.fullmatch(r"ek_[0-9a-f]{32}", body["value"])
    assert before + 600 <= body["expires_at"] <= int(time.time()) + 600
    session = body["session"]
    assert session["object"] == "realtime.session" and session["id"].startswith("sess_")
    assert session["model"] == "gpt-realtime" and session["instructions"] == "You are a friendly assistant."
    assert session["output_modalities"] == ["audio"] and session["max_output_tokens"] == "inf"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy",
                                          "speed": 1.0}
    seen = await (await http.get(f"{sim.base_url}/_sim/secrets/latest")).json()
    assert seen["body"] == FACTS_EXAMPLE_REQUEST
    assert seen["safety_identifier"] == "user-hash-42"
    assert seen["headers"]["Authorization"] == "Bearer <redacted>"
    assert API_KEY not in json.dumps(seen)
    state = await (await http.get(f"{sim.base_url}/_sim/state")).json()
    assert state["last_client_secret_request"]["safety_identifier"] == "user-hash-42"
    assert API_KEY not in json.dumps(state)


@pytest.mark.parametrize("body", [
    {"session": {"type": "realtime", "model": "gpt-realtime-mini", "output_modalities": ["text"],
                 "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"},
                                     "noise_reduction": {"type": "near_field"}},
                           "output": {"voice": {"id": "voice_1234"}, "speed": 1.2}},
                 "max_output_tokens": 4096, "truncation": {"type": "retention_ratio", "retention_ratio": 0.8},
                 "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {}}],
                 "tool_choice": {"type": "function", "name": "f"}, "tracing": "auto", "prompt": None}},
    {"expires_after": {"seconds": 10}, "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}}},
    {"expires_after": {"anchor": "created_at", "seconds": 7200}},
    {},
])
async def test_valid_requests_are_accepted(sim, http, auth, body):
    resp, answer = await _secret(sim, http, auth, body)
    assert resp.status == 200, answer
    check_client_secret_response(answer)


@pytest.mark.parametrize("body,param,code", [
    # beta shape
    ({"model": "gpt-realtime", "voice": "alloy"}, "model", "unknown_parameter"),
    ({"session": {"type": "realtime", "modalities": ["audio", "text"]}}, "session.modalities", "unknown_parameter"),
    ({"session": {"type": "realtime", "voice": "alloy"}}, "session.voice", "unknown_parameter"),
    ({"session": {"type": "realtime", "input_audio_format": "pcm16"}}, "session.input_audio_format",
     "unknown_parameter"),
    ({"session": {"type": "realtime", "temperature": 0.8}}, "session.temperature", "unknown_parameter"),
    ({"session": {"type": "realtime", "turn_detection": None}}, "session.turn_detection", "unknown_parameter"),
    ({"session": {"type": "realtime", "max_response_output_tokens": 10}}, "session.max_response_output_tokens",
     "unknown_parameter"),
    # bad values
    ({"expires_after": {"anchor": "created_at", "seconds": 9}}, "expires_after.seconds", "integer_below_min_value"),
    ({"expires_after": {"seconds": 7201}}, "expires_after.seconds", "integer_above_max_value"),
    ({"expires_after": {"anchor": "now"}}, "expires_after.anchor", "invalid_value"),
    ({"session": {"model": "gpt-realtime"}}, "session.type", "missing_required_parameter"),
    ({"session": {"type": "transcription"}}, "session.type", "invalid_value"),
    ({"session": {"type": "realtime", "model": "gpt-5"}}, "session.model", "invalid_value"),
    ({"session": {"type": "realtime", "output_modalities": ["text", "audio"]}}, "session.output_modalities",
     "invalid_value"),
    ({"session": {"type": "realtime", "audio": {"output": {"voice": "robot"}}}}, "session.audio.output.voice",
     "invalid_value"),
    ({"session": {"type": "realtime", "max_output_tokens": 0}}, "session.max_output_tokens",
     "integer_below_min_value"),
    ({"session": {"type": "realtime", "max_output_tokens": 4097}}, "session.max_output_tokens",
     "integer_above_max_value"),
    ({"session": {"type": "realtime", "max_output_tokens": "infinite"}}, "session.max_output_tokens",
     "invalid_type"),
    ({"session": {"type": "realtime", "truncation": {"type": "retention_ratio"}}},
     "session.truncation.retention_ratio", "missing_required_parameter"),
    ({"session": {"type": "realtime", "truncation": "sometimes"}}, "session.truncation", "invalid_value"),
    ({"session": {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "push"}}}}},
     "session.audio.input.turn_detection.type", "invalid_value"),
    ({"session": {"type": "realtime", "audio": {"input": {"turn_detection": {
        "type": "server_vad", "idle_timeout_ms": 100}}}}}, "session.audio.input.turn_detection.idle_timeout_ms",
     "integer_below_min_value"),
    ({"session": {"type": "realtime", "audio": {"input": {"turn_detection": {
        "type": "semantic_vad", "silence_duration_ms": 100}}}}},
     "session.audio.input.turn_detection.silence_duration_ms", "unknown_parameter"),
    ({"session": {"type": "realtime", "audio": {"input": {"transcription": {"model": 1}}}}},
     "session.audio.input.transcription.model", "invalid_type"),
    ({"session": {"type": "realtime", "audio": {"input": {"rate": 16000}}}}, "session.audio.input.rate",
     "unknown_parameter"),
    ({"session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}},
     "session.audio.input.format.rate", "invalid_value"),
])
async def test_beta_shape_and_bad_values_are_refused(sim, http, auth, body, param, code):
    resp, answer = await _secret(sim, http, auth, body)
    assert resp.status == 400
    assert answer["error"]["param"] == param
    assert answer["error"]["code"] == code
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]


async def test_auth_json_and_beta_header(sim, http, auth):
    url = f"{sim.base_url}/v1/realtime/client_secrets"
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic abc"}):
        resp = await http.post(url, json=FACTS_EXAMPLE_REQUEST, headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    resp = await http.post(url, data="{nope", headers={**auth, "Content-Type": "application/json"})
    assert resp.status == 400
    resp = await http.post(url, json=FACTS_EXAMPLE_REQUEST, headers={**auth, "OpenAI-Beta": "realtime=v1"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "beta_api_shape_disabled"


async def test_ephemeral_secret_expiry_with_an_injected_clock(http):
    now = [1_000_000.0]
    sim = await start_simulator("127.0.0.1", 0, api_key=API_KEY, clock=lambda: now[0])
    try:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        _, body = await _secret(sim, http, auth, {"expires_after": {"seconds": 10}})
        assert body["expires_at"] == 1_000_010
        client = RtcClient()
        try:
            now[0] += 9
            await client.connect(sim.base_url, body["value"])  # still valid at +9 s
        finally:
            await client.close()
        now[0] += 1  # +10 s: expired
        resp = await http.post(f"{sim.base_url}/v1/realtime/calls", data="v=0\r\nm=audio 9 x 0\r\n",
                               headers={"Authorization": f"Bearer {body['value']}", "Content-Type": "application/sdp"})
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    finally:
        await sim.stop()


async def test_clock_control_endpoint_expires_secrets(sim, http, auth):
    _, body = await _secret(sim, http, auth, {"expires_after": {"seconds": 30}})
    await http.post(f"{sim.base_url}/_sim/clock", json={"advance_s": 31})
    resp = await http.post(f"{sim.base_url}/v1/realtime/calls", data="v=0\r\nm=audio 9 x 0\r\n",
                           headers={"Authorization": f"Bearer {body['value']}", "Content-Type": "application/sdp"})
    assert resp.status == 401
    state = await (await http.get(f"{sim.base_url}/_sim/state")).json()
    assert state["secrets"] == {"issued": 1, "valid": 0}


async def test_calls_cors_location_bad_sdp_and_hangup(sim, http, auth):
    url = f"{sim.base_url}/v1/realtime/calls"
    origin = "http://127.0.0.1:9999"
    pre = await http.options(url, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == origin
    assert pre.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert pre.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    assert pre.headers["Access-Control-Expose-Headers"] == "Location"

    _, secret = await _secret(sim, http, auth, headers={"OpenAI-Safety-Identifier": "hash-7"})
    beta = await http.post(url, data="v=0", headers={"Authorization": f"Bearer {secret['value']}",
                                                     "Content-Type": "application/sdp", "OpenAI-Beta": "realtime=v1"})
    assert beta.status == 400 and (await beta.json())["error"]["code"] == "beta_api_shape_disabled"
    client = RtcClient()
    try:
        resp = await client.connect(sim.base_url, secret["value"], origin=origin)
        assert resp.status == 201 and resp.content_type == "application/sdp"
        assert re.fullmatch(r"/v1/realtime/calls/rtc_[0-9a-f]{32}", resp.headers["Location"])
        assert resp.headers["Access-Control-Allow-Origin"] == origin
        assert resp.headers["Access-Control-Expose-Headers"] == "Location"
        call = await (await http.get(f"{sim.base_url}/_sim/calls/{client.call_id}")).json()
        assert call["session"]["id"] == secret["session"]["id"]
        assert call["session"]["expires_at"] > 0
        assert call["safety_identifier"] == "hash-7"  # carried over from the secret's request

        bad = await http.post(url, data="hello", headers={**auth, "Content-Type": "application/sdp",
                                                          "Origin": origin})
        assert bad.status == 400 and (await bad.json())["error"]["code"] == "invalid_offer"
        assert bad.headers["Access-Control-Allow-Origin"] == origin
        garbled = await http.post(url, data="v=0\r\nm=audio nonsense\r\n",
                                  headers={**auth, "Content-Type": "application/sdp"})
        assert garbled.status == 400
        assert (await http.post(url, data="v=0", headers={"Content-Type": "application/sdp"})).status == 401

        hang = f"{sim.base_url}/v1/realtime/calls/{client.call_id}/hangup"
        assert (await http.post(hang)).status == 401
        missing = await http.post(f"{sim.base_url}/v1/realtime/calls/rtc_nope/hangup", headers=auth)
        assert missing.status == 404 and (await missing.json())["error"]["code"] == "call_id_not_found"
        ok = await http.post(hang, headers=auth)
        assert ok.status == 200 and await ok.json() == {}
        call = await (await http.get(f"{sim.base_url}/_sim/calls/{client.call_id}")).json()
        assert call["state"] == "closed" and call["hungup"] is True
    finally:
        await client.close()


async def test_multipart_calls_validate_the_session_part(sim, http, auth):
    client = RtcClient()
    try:
        await client.connect(sim.base_url, API_KEY, multipart=True, session={
            "type": "realtime", "model": "gpt-realtime-mini", "instructions": "Multipart!",
            "audio": {"output": {"voice": "marin"}}}, )
        created = client.events[0]["session"]
        assert created["instructions"] == "Multipart!" and created["audio"]["output"]["voice"] == "marin"
        assert created["model"] == "gpt-realtime-mini"
    finally:
        await client.close()
    url = f"{sim.base_url}/v1/realtime/calls"
    for session, param in (({"model": "gpt-realtime"}, "session.type"),
                           ({"type": "realtime", "voice": "alloy"}, "session.voice")):
        form = aiohttp.FormData()
        form.add_field("sdp", "v=0\r\nm=audio 9 x 0\r\n", content_type="application/sdp")
        form.add_field("session", json.dumps(session),
                       content_type="application/json")
        resp = await http.post(url, data=form, headers=auth)
        assert resp.status == 400 and (await resp.json())["error"]["param"] == param
    form = aiohttp.FormData()
    form.add_field("session", json.dumps({"type": "realtime"}), content_type="application/json")
    resp = await http.post(url, data=form, headers=auth)
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "sdp"


async def test_sideband_refusals(sim, http, auth):
    url = f"{sim.base_url}/v1/realtime"
    assert (await http.get(url, params={"call_id": "rtc_x"})).status == 401
    resp = await http.get(url, params={"call_id": "rtc_x"}, headers=auth)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "call_id_not_found"
    assert (await http.get(url, headers=auth)).status == 400
    # The beta interface: its WebSocket is closed with 4000, its SDP exchange refused with 400.
    ws = await http.ws_connect(url, params={"call_id": "rtc_x"}, headers={**auth, "OpenAI-Beta": "realtime=v1"})
    assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    assert (ws.close_code, (await ws.receive()).type) == (4000, aiohttp.WSMsgType.CLOSED)
    beta = await http.post(url, params={"model": "gpt-realtime"}, data="v=0",
                           headers={**auth, "Content-Type": "application/sdp"})
    assert beta.status == 400 and (await beta.json())["error"]["code"] == "beta_api_shape_disabled"
    assert (await http.post(url, params={"model": "gpt-realtime"}, data="v=0")).status == 401


async def _post_secret(sim, http, auth, timeout=None):
    return await http.post(f"{sim.base_url}/v1/realtime/client_secrets", json=FACTS_EXAMPLE_REQUEST,
                           headers=auth, timeout=timeout)


async def test_fault_latency_is_non_blocking(sim, http, auth):
    await http.post(f"{sim.base_url}/_sim/faults", json={"endpoint": "client_secrets", "latency_ms": 200})
    start = time.monotonic()
    results = await asyncio.gather(*(_post_secret(sim, http, auth) for _ in range(4)))
    elapsed = time.monotonic() - start
    assert all(r.status == 200 for r in results)
    assert 0.19 <= elapsed < 0.6  # four concurrent requests overlap: the sleep does not block the loop
    faults = (await (await http.get(f"{sim.base_url}/_sim/faults")).json())["faults"]
    assert faults[0]["latency_ms"] == 200 and faults[0]["count"] is None


async def test_fault_status_count_and_clear(sim, http, auth):
    await http.post(f"{sim.base_url}/_sim/faults", json={"endpoint": "client_secrets", "status": 503, "count": 2})
    first, second, third = [await _post_secret(sim, http, auth) for _ in range(3)]
    assert first.status == second.status == 503
    error = (await first.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert third.status == 200
    await http.post(f"{sim.base_url}/_sim/faults", json={"endpoint": "*", "status": 429})
    assert (await _post_secret(sim, http, auth)).status == 429
    hang = await http.post(f"{sim.base_url}/v1/realtime/calls/rtc_x/hangup", headers=auth)
    assert hang.status == 429
    assert (await http.delete(f"{sim.base_url}/_sim/faults")).status == 200
    assert (await _post_secret(sim, http, auth)).status == 200
    bad = await http.post(f"{sim.base_url}/_sim/faults", json={"endpoint": "everything"})
    assert bad.status == 400


async def test_fault_bad_json_drop_and_timeout(sim, http, auth):
    await http.post(f"{sim.base_url}/_sim/faults", json={"endpoint": "client_secrets", "bad_json": True, "count": 1})
    resp = await _post_secret(sim, http, auth)
    assert resp.status == 200
    with pytest.raises(ValueError):
        json.loads(await resp.text())

    await http.post(f"{sim.base_url}/_sim/faults", json={"endpoint": "calls", "drop": True, "count": 1})
    with pytest.raises(aiohttp.ClientError):
        await http.post(f"{sim.base_url}/v1/realtime/calls", data="v=0", headers=auth)

    await http.post(f"{sim.base_url}/_sim/faults", json={"endpoint": "client_secrets", "timeout": True})
    start = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await _post_secret(sim, http, auth, timeout=aiohttp.ClientTimeout(total=0.3))
    assert time.monotonic() - start < 1.0
    # A short hold answers 504 once the hold is over.
    await http.post(f"{sim.base_url}/_sim/faults", json={"endpoint": "client_secrets", "timeout": True,
                                                         "hold_s": 0.2, "count": 1})
    resp = await _post_secret(sim, http, auth)
    assert resp.status == 504
    assert (await _post_secret(sim, http, auth)).status == 200


async def test_only_loopback_names_and_no_web_page_reach_the_test_controls(sim, http, auth):
    """A page elsewhere could rebind a name of its own to 127.0.0.1, or post a form to the test controls."""
    rebound = {"Host": f"rebind.example:{sim.port}"}
    async with http.get(f"{sim.base_url}/_sim/state", headers=rebound) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden_host"
    async with http.post(f"{sim.base_url}/v1/realtime/client_secrets", json={}, headers={**auth, **rebound}) as resp:
        assert resp.status == 403
    async with http.post(f"{sim.base_url}/_sim/faults", data='{"endpoint": "*", "status": 500}',
                         headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden_origin"
    async with http.get(f"{sim.base_url}/_sim/state") as resp:
        assert resp.status == 200 and (await resp.json())["faults"] == []
    async with http.get(f"{sim.base_url.replace('127.0.0.1', 'localhost')}/_sim/state") as resp:
        assert resp.status == 200
