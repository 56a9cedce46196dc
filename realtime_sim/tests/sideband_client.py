"""Helpers for tests that act as the product's server: secrets, sideband sockets, call views."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from .conftest import API_KEY


async def mint_secret(base_url: str, http: aiohttp.ClientSession, session: dict | None = None,
                      seconds: int | None = None) -> str:
    body: dict = {"session": session or {"type": "realtime"}}
    if seconds is not None:
        body["expires_after"] = {"anchor": "created_at", "seconds": seconds}
    resp = await http.post(f"{base_url}/v1/realtime/client_secrets", json=body,
                           headers={"Authorization": f"Bearer {API_KEY}"})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["value"]


async def call_detail(base_url: str, http: aiohttp.ClientSession, call_id: str) -> dict:
    return await (await http.get(f"{base_url}/_sim/calls/{call_id}")).json()


async def wait_until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll an async or sync predicate until true."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class SidebandClient:
    """One sideband WebSocket, recording every event it gets and how it ended."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict] = []
        self.end: aiohttp.WSMessage | None = None  # the first non-text message

    @classmethod
    async def attach(cls, base_url: str, http: aiohttp.ClientSession, call_id: str,
                     token: str = API_KEY) -> SidebandClient:
        ws = await http.ws_connect(f"{base_url}/v1/realtime", params={"call_id": call_id},
                                   headers={"Authorization": f"Bearer {token}"})
        return cls(ws)

    async def send(self, event: dict) -> None:
        await self.ws.send_str(json.dumps(event))

    async def _read_one(self, timeout: float) -> bool:
        """Read one message; False once the socket has ended."""
        if self.end is not None:
            return False
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            self.events.append(json.loads(msg.data))
            return True
        self.end = msg
        return False

    async def wait_for(self, type_: str, predicate=None, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            for event in self.events[index:]:
                if event["type"] == type_ and (predicate is None or predicate(event)):
                    return event
            index = len(self.events)
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"sideband: no {type_} within {timeout}s; got {self.types()}"
            try:
                if not await self._read_one(remaining):
                    raise AssertionError(f"sideband ended ({self.end}) before {type_}; got {self.types()}")
            except asyncio.TimeoutError:
                pass

    async def wait_end(self, timeout: float = 5.0) -> aiohttp.WSMessage:
        """Read until the socket ends; the ending message (CLOSE carries the close code)."""
        deadline = time.monotonic() + timeout
        while await self._read_one(max(0.01, deadline - time.monotonic())):
            pass
        return self.end

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]
