"""The data channel's message size limit: advertised in the answer, enforced both ways."""

from __future__ import annotations

import json

import pytest

from .conformance import check_server_events
from .conftest import API_KEY
from .rtc_client import RtcClient
from .sideband_client import SidebandClient, call_detail


def _item_event(text: str, item_id: str | None = None) -> dict:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    if item_id:
        item["id"] = item_id
    return {"type": "conversation.item.create", "item": item}


def _size(event: dict) -> int:
    return len(json.dumps(event).encode("utf-8"))


async def test_the_answer_advertises_the_limit_and_a_compliant_peer_keeps_to_it(sim, http):
    client = RtcClient()
    try:
        await client.connect(sim.base_url, API_KEY)
        lines = [line for line in client.answer_sdp.splitlines() if line.startswith("a=max-message-size:")]
        assert lines == ["a=max-message-size:65536"]  # not aiortc's 262144
        with pytest.raises(ValueError):  # as Chromium throws for a message over the peer's limit
            client.send(_item_event("x" * 70000))
        client.send(_item_event("w" * 60000))  # under the limit
        added = await client.wait_for("conversation.item.added")
        assert added["item"]["content"][0]["text"] == "w" * 60000
        detail = await call_detail(sim.base_url, http, client.call_id)
        assert detail["datachannel"]["refused_in"] == [] and detail["datachannel"]["dropped_out"] == []
        assert 60000 < detail["datachannel"]["max_in_bytes"] <= 65536
        assert 60000 < detail["datachannel"]["max_out_bytes"] <= 65536  # the echo in item.added / item.done
    finally:
        await client.close()


async def test_oversized_messages_are_refused_and_oversized_events_stay_off_the_channel(sim, http):
    await http.post(f"{sim.base_url}/_sim/config", json={"datachannel_max_message_bytes": 8192})
    client = RtcClient()
    try:
        await client.connect(sim.base_url, API_KEY, honour_max_message_size=False)
        assert "a=max-message-size:8192" in client.answer_sdp.splitlines()

        big = _item_event("y" * 9000, "item_big_from_browser")
        client.send(big)
        error = await client.wait_for("error")
        assert error["error"]["code"] == "message_too_large"
        assert error["error"]["type"] == "invalid_request_error"
        client.send(_item_event("small", "item_small_1"))
        await client.wait_for("conversation.item.added", lambda e: e["item"]["id"] == "item_small_1")
        detail = await call_detail(sim.base_url, http, client.call_id)
        assert "item_big_from_browser" not in [i["id"] for i in detail["items"]]  # never processed
        assert len(detail["client_events"]) == 1  # only the small one

        # The server may send more over its sideband; the echoes are too big for the channel.
        side = await SidebandClient.attach(sim.base_url, http, client.call_id)
        await side.send(_item_event("z" * 9000, "item_big_from_server"))
        big_added = await side.wait_for("conversation.item.added",
                                        lambda e: e["item"]["id"] == "item_big_from_server")
        big_done = await side.wait_for("conversation.item.done", lambda e: e["item"]["id"] == "item_big_from_server")
        await side.send(_item_event("after", "item_small_2"))
        await client.wait_for("conversation.item.done", lambda e: e["item"]["id"] == "item_small_2")
        assert not [e for e in client.events if e.get("item", {}).get("id") == "item_big_from_server"]

        detail = await call_detail(sim.base_url, http, client.call_id)
        stats = detail["datachannel"]
        assert stats["refused_in"] == [_size(big)]
        assert stats["max_in_bytes"] == _size(big)
        assert stats["dropped_out"] == [_size(big_added), _size(big_done)]
        assert 0 < stats["max_out_bytes"] <= 8192
        assert "item_big_from_server" in [i["id"] for i in detail["items"]]
        check_server_events(client.events + side.events)
    finally:
        await client.close()
