"""End to end over real WebRTC on loopback: an aiortc client plays the browser."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from realtime_sim import usage

from .conformance import check_server_events
from .conftest import API_KEY
from .rtc_client import RtcClient

INSTRUCTIONS = "You answer from the team's documents."
DOCUMENT = "[Doc 1] Opening hours\nThe cafe opens at nine. Lunch is served until two."
FIRST_ANSWER = "From the document: The cafe opens at nine."


async def _secret(sim, http, session: dict) -> str:
    resp = await http.post(f"{sim.base_url}/v1/realtime/client_secrets", json={"session": session},
                           headers={"Authorization": f"Bearer {API_KEY}"})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["value"]


async def _detail(sim, http, call_id: str) -> dict:
    return await (await http.get(f"{sim.base_url}/_sim/calls/{call_id}")).json()


def _inject_document(client: RtcClient, text: str = DOCUMENT) -> None:
    client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})


async def test_voice_turn_answers_from_the_document_with_audio_and_usage(sim, http):
    token = await _secret(sim, http, {
        "type": "realtime", "instructions": INSTRUCTIONS,
        "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}})
    client = RtcClient()
    try:
        await client.connect(sim.base_url, token)
        assert client.events[0]["type"] == "session.created"
        assert client.events[0]["session"]["instructions"] == INSTRUCTIONS
        _inject_document(client)
        await client.wait_for("conversation.item.done")
        client.mic.speak(1000)
        client.mic.pause(1000)
        started = await client.wait_for("input_audio_buffer.speech_started")
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        assert started["item_id"] == stopped["item_id"]
        assert stopped["audio_end_ms"] - started["audio_start_ms"] >= 1000
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert completed["transcript"].startswith("(about ")
        done = await client.wait_for("response.done", timeout=15)
        await client.wait_for("output_audio_buffer.stopped")
        response = done["response"]
        assert response["status"] == "completed"
        deltas = [e["delta"] for e in client.events if e["type"] == "response.output_audio_transcript.delta"]
        assert len(deltas) == len(FIRST_ANSWER.split()) and "".join(deltas) == FIRST_ANSWER
        assert response["output"][0]["content"] == [{"type": "output_audio", "transcript": FIRST_ANSWER}]
        # Audio came back over the media track, loud while speaking.
        assert client.voiced_audio_frames >= 50
        detail = await _detail(sim, http, client.call_id)
        assert detail["state"] == "active"
        assert detail["audio_in"]["voiced_frames"] >= 40 and detail["audio_in"]["max_rms"] > 0.05
        assert detail["audio_out"]["voiced_frames"] >= 50
        assert detail["server_event_types"][0] == "session.created"
        assert detail["client_events"][0]["type"] == "conversation.item.create"
        # Usage follows the rules exactly.
        user_ms = detail["item_audio_ms"][stopped["item_id"]]
        assert user_ms == stopped["audio_end_ms"] - started["audio_start_ms"]
        spoken_ms = detail["responses"][0]["audio_ms"]
        assert spoken_ms == 2720  # 42 characters * 65 ms, whole frames
        text_in = usage.count_text_tokens(INSTRUCTIONS) + usage.count_text_tokens(DOCUMENT)
        text_out = usage.count_text_tokens(FIRST_ANSWER)
        assert text_out == 10
        assert response["usage"] == {
            "total_tokens": text_in + usage.input_audio_tokens(user_ms) + text_out + 55,
            "input_tokens": text_in + usage.input_audio_tokens(user_ms),
            "output_tokens": text_out + 55,
            "input_token_details": {
                "text_tokens": text_in, "audio_tokens": usage.input_audio_tokens(user_ms), "image_tokens": 0,
                "cached_tokens": 0, "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": 55},
        }
        check_server_events(client.events)
    finally:
        await client.close()


async def test_speech_during_a_response_interrupts_it(sim, http):
    client = RtcClient()
    try:
        await client.connect(sim.base_url, API_KEY)  # API key + raw SDP: default session (server_vad)
        await http.post(f"{sim.base_url}/_sim/calls/{client.call_id}/script",
                        json={"text": "This is a very long answer that keeps going and going so that the user "
                                      "has plenty of time to interrupt it in the middle of a sentence."})
        client.mic.speak(600)
        client.mic.pause(600)
        first = await client.wait_for("output_audio_buffer.started")
        await asyncio.sleep(1.0)
        mark = len(client.events)
        client.mic.speak(600)
        client.mic.pause(600)
        barge = await client.wait_for("input_audio_buffer.speech_started", start=mark)
        done = await client.wait_for("response.done", start=mark)
        response = done["response"]
        assert response["id"] == first["response_id"]
        assert response["status"] == "cancelled"
        assert response["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        cleared = await client.wait_for("output_audio_buffer.cleared", start=mark)
        assert cleared["response_id"] == first["response_id"]
        order = [e["type"] for e in client.events[mark:]]
        assert order.index("input_audio_buffer.speech_started") < order.index("response.done") \
            < order.index("output_audio_buffer.cleared")
        assert "output_audio_buffer.stopped" not in order[:order.index("output_audio_buffer.cleared")]
        # Usage bills only what was spoken before the cut.
        detail = await _detail(sim, http, client.call_id)
        spoken = detail["responses"][0]["audio_ms"]
        assert 800 <= spoken < 6000
        assert response["usage"]["output_token_details"]["audio_tokens"] == usage.output_audio_tokens(spoken)
        partial = response["output"][0]["content"][0]["transcript"]
        assert partial and len(partial) < 100 and response["output"][0]["status"] == "incomplete"
        assert response["usage"]["output_token_details"]["text_tokens"] == usage.count_text_tokens(partial)
        assert detail["audio_out"]["speaking"] is False
        # The interrupting turn is answered next.
        second = await client.wait_for("response.created", start=mark)
        assert second["response"]["id"] != first["response_id"]
        detail = await _detail(sim, http, client.call_id)
        assert barge["item_id"] in [i["id"] for i in detail["items"]]
        check_server_events(client.events)
    finally:
        await client.close()


async def test_push_to_talk_speech_alone_never_answers(sim, http):
    token = await _secret(sim, http, {"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    client = RtcClient()
    try:
        await client.connect(sim.base_url, token)
        await http.post(f"{sim.base_url}/_sim/calls/{client.call_id}/script", json={"text": "Okay."})
        client.mic.speak(800)
        client.mic.pause(700)
        await asyncio.sleep(1.8)
        detail = await _detail(sim, http, client.call_id)
        assert detail["audio_in"]["voiced_frames"] >= 30  # the speech was heard...
        assert not any(t.startswith("input_audio_buffer.speech") or t.startswith("response.")
                       for t in client.types())  # ...and nothing happened
        client.send({"type": "input_audio_buffer.commit"})
        committed = await client.wait_for("input_audio_buffer.committed")
        await asyncio.sleep(0.3)
        assert "response.created" not in client.types()
        client.send({"type": "response.create"})
        done = await client.wait_for("response.done", timeout=15)
        assert done["response"]["status"] == "completed"
        detail = await _detail(sim, http, client.call_id)
        user_ms = detail["item_audio_ms"][committed["item_id"]]
        assert user_ms >= 1500  # everything since the call started, speech and silence
        audio_in = done["response"]["usage"]["input_token_details"]["audio_tokens"]
        assert audio_in == usage.input_audio_tokens(user_ms)
        check_server_events(client.events)
    finally:
        await client.close()


async def test_function_call_round_trip_through_the_sideband(sim, http):
    tool = {"type": "function", "name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    client = RtcClient()
    try:
        # The unified interface: the server posts the SDP with its API key and the session.
        await client.connect(sim.base_url, API_KEY, multipart=True,
                             session={"type": "realtime", "tools": [tool], "instructions": INSTRUCTIONS})
        await http.post(f"{sim.base_url}/_sim/calls/{client.call_id}/script",
                        json={"function_call": {"name": "get_weather", "arguments": {"city": "Paris"}}})
        ws = await http.ws_connect(f"{sim.base_url}/v1/realtime?call_id={client.call_id}",
                                   headers={"Authorization": f"Bearer {API_KEY}"})
        side: list[dict] = []

        async def side_wait(type_: str, timeout: float = 10.0) -> dict:
            deadline = time.monotonic() + timeout
            while True:
                for event in side:
                    if event["type"] == type_:
                        return event
                msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                side.append(json.loads(msg.data))

        assert (await side_wait("session.created"))["session"]["tools"][0]["name"] == "get_weather"
        await ws.send_str(json.dumps({"type": "response.create"}))
        args_done = await side_wait("response.function_call_arguments.done")
        assert args_done["name"] == "get_weather" and json.loads(args_done["arguments"]) == {"city": "Paris"}
        fc_done = await side_wait("response.done")
        assert fc_done["response"]["output"][0]["type"] == "function_call"
        # The browser's data channel saw the same events.
        dc_args = await client.wait_for("response.function_call_arguments.done")
        assert dc_args["event_id"] == args_done["event_id"]

        side.clear()
        await ws.send_str(json.dumps({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": args_done["call_id"], "output": '{"temperature_c": 21}'}}))
        await ws.send_str(json.dumps({"type": "response.create"}))
        spoken = await side_wait("response.done", timeout=15)
        transcript = spoken["response"]["output"][0]["content"][0]["transcript"]
        assert transcript == "Here is what I found: temperature_c 21"
        await client.wait_for("response.done", lambda e: e["response"]["id"] == spoken["response"]["id"])
        input_text = spoken["response"]["usage"]["input_token_details"]["text_tokens"]
        assert input_text == (usage.count_text_tokens(INSTRUCTIONS) + usage.count_text_tokens(args_done["arguments"])
                              + usage.count_text_tokens('{"temperature_c": 21}'))
        detail = await _detail(sim, http, client.call_id)
        assert detail["client_event_sources"] == ["sideband"] * 3
        assert [e["type"] for e in detail["client_events"]] == [
            "response.create", "conversation.item.create", "response.create"]
        check_server_events(client.events + side)

        # Hanging up ends the call and closes the sideband socket.
        assert (await http.post(f"{sim.base_url}/v1/realtime/calls/{client.call_id}/hangup",
                                headers={"Authorization": f"Bearer {API_KEY}"})).status == 200
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                break
        assert ws.closed or msg.type != aiohttp.WSMsgType.TEXT
        detail = await _detail(sim, http, client.call_id)
        assert detail["state"] == "closed" and detail["hungup"] is True and detail["sidebands"] == 0
        late = await http.get(f"{sim.base_url}/v1/realtime", params={"call_id": client.call_id},
                              headers={"Authorization": f"Bearer {API_KEY}"})
        assert late.status == 404
    finally:
        await client.close()


async def test_usage_rebills_the_conversation_and_caches_the_previous_input(sim, http):
    token = await _secret(sim, http, {"type": "realtime", "instructions": INSTRUCTIONS})
    client = RtcClient()
    try:
        await client.connect(sim.base_url, token)
        _inject_document(client)
        client.send({"type": "response.create"})
        first = (await client.wait_for("response.done", timeout=15))["response"]
        await client.wait_for("output_audio_buffer.stopped")
        text_in = usage.count_text_tokens(INSTRUCTIONS) + usage.count_text_tokens(DOCUMENT)
        assert first["usage"]["input_tokens"] == text_in
        assert first["usage"]["input_token_details"]["cached_tokens"] == 0

        await http.post(f"{sim.base_url}/_sim/calls/{client.call_id}/script", json={"text": "Sure."})
        client.mic.speak(600)
        client.mic.pause(600)
        second = (await client.wait_for("response.done", lambda e: e["response"]["id"] != first["id"],
                                        timeout=15))["response"]
        detail = await _detail(sim, http, client.call_id)
        spoken_ms = detail["responses"][0]["audio_ms"]
        user_item = [i for i in detail["items"] if i["role"] == "user" and i["content"][0]["type"] == "input_audio"]
        user_ms = detail["item_audio_ms"][user_item[0]["id"]]
        audio_in = usage.output_audio_tokens(spoken_ms) + usage.input_audio_tokens(user_ms)
        details = second["usage"]["input_token_details"]
        assert details["text_tokens"] == text_in  # instructions + document again
        assert details["audio_tokens"] == audio_in  # first answer's audio + the new user turn
        assert second["usage"]["input_tokens"] == text_in + audio_in
        # The previous response's whole input is the unchanged prefix: cached.
        assert details["cached_tokens"] == first["usage"]["input_tokens"] == text_in
        assert details["cached_tokens_details"] == {"text_tokens": text_in, "audio_tokens": 0, "image_tokens": 0}
        assert second["usage"]["output_token_details"] == {"text_tokens": 2, "audio_tokens": 24}
        assert second["usage"]["total_tokens"] == text_in + audio_in + 26
        check_server_events(client.events)
    finally:
        await client.close()


async def test_closing_the_browser_peer_closes_the_call(sim, http):
    client = RtcClient()
    await client.connect(sim.base_url, API_KEY)
    ws = await http.ws_connect(f"{sim.base_url}/v1/realtime?call_id={client.call_id}",
                               headers={"Authorization": f"Bearer {API_KEY}"})
    await client.close()
    deadline = time.monotonic() + 5
    while (await _detail(sim, http, client.call_id))["state"] != "closed":
        assert time.monotonic() < deadline, "call not closed after pc.close()"
        await asyncio.sleep(0.05)
    detail = await _detail(sim, http, client.call_id)
    assert detail["hungup"] is False
    while True:  # the sideband socket is closed by the server as well
        msg = await ws.receive(timeout=5)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
    calls = await (await http.get(f"{sim.base_url}/_sim/calls")).json()
    assert [c["id"] for c in calls] == [client.call_id]


def _fingerprint(sdp: str) -> str:
    return next(line for line in sdp.splitlines() if line.startswith("a=fingerprint:"))


async def test_calls_share_the_process_certificate_and_each_still_connects(sim, http):
    """One DTLS certificate for the simulator's calls: each browser peer still checks it against the
    answer's fingerprint in its handshake, and gets the session."""
    clients = [RtcClient(), RtcClient()]
    try:
        for client in clients:
            await client.connect(sim.base_url, API_KEY)
            assert client.events[0]["type"] == "session.created"
            assert client.pc.connectionState == "connected"
        assert _fingerprint(clients[0].answer_sdp) == _fingerprint(clients[1].answer_sdp)
        # The browser side's own peer keeps a certificate of its own.
        offer = clients[0].pc.localDescription.sdp
        assert _fingerprint(offer) != _fingerprint(clients[0].answer_sdp)
    finally:
        for client in clients:
            await client.close()
