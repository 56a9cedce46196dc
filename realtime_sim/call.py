"""A call: one WebRTC peer, its conversation, and any sideband WebSockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from aiohttp import web

from .audio import OutputAudio
from .config import SimConfig
from .conversation import Conversation
from .events import error_event
from .peer import CallPeer

log = logging.getLogger(__name__)
MAX_QUEUED_EVENTS = 2000
SESSION_EXPIRED_MESSAGE = "Your session hit the maximum duration of 60 minutes."


def secret_digest(value: str) -> str:
    """What a call keeps of the secret that created it: enough to recognise it, never the value."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass
class DataChannelStats:
    """Message sizes on the data channel, in UTF-8 bytes, for tests of the size limit."""

    max_in_bytes: int = 0  # largest message received (refused ones included)
    max_out_bytes: int = 0  # largest message actually sent
    refused_in: list[int] = field(default_factory=list)
    dropped_out: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class Sideband:
    """One server-side WebSocket on a call; an ordered writer so events keep order."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None = None) -> None:
        self.ws = ws
        self.transport = transport
        self.dropped = False
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        while True:
            text = await self.queue.get()
            if text is None or self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    def send(self, text: str) -> None:
        self.queue.put_nowait(text)

    def abort(self) -> None:
        """End the socket the way a network drop does: no close frame, the TCP connection just goes."""
        self.dropped = True
        self.writer.cancel()
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        if self.dropped:
            return
        self.queue.put_nowait(None)
        try:
            await asyncio.wait_for(self.writer, 2)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        if not self.ws.closed:
            await self.ws.close()  # a normal (1000) close frame


class Call:
    def __init__(
        self,
        call_id: str,
        session: dict,
        *,
        safety_identifier: str | None = None,
        config: SimConfig | None = None,
        clock: Callable[[], float] | None = None,
        created_at: float | None = None,
        created_by: dict | None = None,
        secret: str | None = None,
    ) -> None:
        self.id = call_id
        self.config = config or SimConfig()
        self._clock = clock or time.time
        created = self._clock() if created_at is None else created_at
        self.created_at = int(created)
        self.created_at_ms = float(created) * 1000  # a float even with an integer test clock
        self.created_by = created_by or {"auth": "api_key", "user_agent": None, "origin": None, "content_type": None}
        # Fixed at creation: the peer has been told (session.expires_at, the SDP answer).
        self.max_seconds = self.config.call_max_seconds
        self.max_message_bytes = self.config.datachannel_max_message_bytes
        self._secret_digest = secret_digest(secret) if secret else None
        self.state = "connecting"
        self.hungup = False
        self.hungup_with: str | None = None  # "api_key" | "call_secret": the credential that hung it up
        self.hangup_refusals = 0
        self.end_reason: str | None = None
        self.ended_at_ms: float | None = None
        self.safety_identifier = safety_identifier
        self.client_events: list[dict] = []
        self.server_events: list[dict] = []
        self.sidebands: set[Sideband] = set()
        self.sideband_attaches: list[dict] = []
        self.sideband_refusals = 0
        self.datachannel = DataChannelStats()
        self._pending: list[str] = []  # events emitted before the data channel opened
        self._channel_ready = False
        self._expiry: asyncio.TimerHandle | None = None
        self.output_audio = OutputAudio()
        self.conversation = Conversation(session, self.emit, self.output_audio, config=self.config, clock=self._clock)
        self.peer = CallPeer(
            output=self.output_audio,
            on_message=self._channel_message,
            on_channel_open=self._channel_opened,
            on_audio=self.conversation.feed_audio,
            on_state=self._peer_state,
        )
        self.closed_event = asyncio.Event()

    def now_ms(self) -> float:
        return float(self._clock()) * 1000

    # -- events out -----------------------------------------------------------------

    def _record(self, event: dict) -> str:
        self.server_events.append(event)
        return json.dumps(event)

    def emit(self, event: dict) -> None:
        """Send a server event to the data channel and every sideband socket."""
        if self.state == "closed":
            return
        text = self._record(event)
        if self._channel_ready:
            self._send_channel(text)
        elif len(self._pending) < MAX_QUEUED_EVENTS:
            self._pending.append(text)
        for sideband in list(self.sidebands):
            sideband.send(text)

    def _send_channel(self, text: str) -> bool:
        """One event onto the data channel, unless it is larger than the advertised limit."""
        size = len(text.encode("utf-8"))
        if size <= self.max_message_bytes:
            if not self.peer.channel_open:
                return False
            if self.peer.send(text):
                self.datachannel.max_out_bytes = max(self.datachannel.max_out_bytes, size)
                return True
            # else: over the browser's own advertised limit, which aiortc enforces
        self.datachannel.dropped_out.append(size)
        log.info("call %s: %d-byte event not sent on the data channel", self.id, size)
        return False

    def _channel_opened(self) -> None:
        if self._channel_ready or self.state == "closed":
            return
        # session.created is always the first event on the channel.
        created = self.conversation.session_created_event()
        self._send_channel(self._record(created))
        for sideband in list(self.sidebands):
            sideband.send(json.dumps(created))
        for text in self._pending:
            self._send_channel(text)
        self._pending.clear()
        self._channel_ready = True

    # -- events in ------------------------------------------------------------------

    def _channel_message(self, text: str, size: int) -> None:
        """A data-channel message: refused unread if larger than the limit the answer advertised."""
        if self.state == "closed":
            return
        self.datachannel.max_in_bytes = max(self.datachannel.max_in_bytes, size)
        if size > self.max_message_bytes:
            self.datachannel.refused_in.append(size)
            self.emit(error_event(
                f"Data channel message of {size} bytes exceeds the maximum message size of "
                f"{self.max_message_bytes} bytes.", "message_too_large"))
            return
        self.client_event(text, "datachannel")

    def client_event(self, text: str, source: str) -> None:
        if self.state == "closed":
            return
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {"_unparsed": text}  # malformed events are recorded too
        self.client_events.append({"source": source, "event": parsed})
        self.conversation.handle_client_event(text)

    # -- sideband -------------------------------------------------------------------

    def owns_secret(self, value: str) -> bool:
        """Is this the ephemeral secret that created the call?"""
        return self._secret_digest is not None and secret_digest(value) == self._secret_digest

    def attach_sideband(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None = None,
                        auth: str = "api_key") -> Sideband:
        sideband = Sideband(ws, transport)
        self.sidebands.add(sideband)
        self.sideband_attaches.append({"at_ms": self.now_ms(), "auth": auth})
        # A new connection learns the session the way any Realtime connection does.
        sideband.send(json.dumps(self.conversation.session_created_event()))
        return sideband

    async def detach_sideband(self, sideband: Sideband) -> None:
        self.sidebands.discard(sideband)
        await sideband.close()

    def drop_sidebands(self) -> int:
        """Abort every sideband socket as a network drop would; the call itself goes on."""
        dropped = list(self.sidebands)
        for sideband in dropped:
            self.sidebands.discard(sideband)
            sideband.abort()
        return len(dropped)

    # -- lifecycle ------------------------------------------------------------------

    def start_timer(self) -> None:
        """Arm the duration cap (wall-clock time from now; /_sim/clock does not move it)."""
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(self.max_seconds, lambda: asyncio.ensure_future(self.expire()))

    async def expire(self) -> None:
        """The cap: one error event on every connection, no warning before it, then the call ends."""
        if self.state == "closed":
            return
        self.emit(error_event(SESSION_EXPIRED_MESSAGE, "session_expired"))
        await self.close("session_expired")

    def _peer_state(self, state: str) -> None:
        if state == "connected" and self.state == "connecting":
            self.state = "active"
        elif state in ("closed", "failed"):
            asyncio.ensure_future(self.close("peer_closed" if state == "closed" else "peer_failed"))

    async def hangup(self, auth: str) -> None:
        if not self.hungup:
            self.hungup, self.hungup_with = True, auth
        await self.close("hangup")

    async def close(self, reason: str = "closed") -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.end_reason = reason
        self.ended_at_ms = self.now_ms()
        if self._expiry is not None:
            self._expiry.cancel()
        self.conversation.close()
        # Let the last events (the session_expired error) reach the browser before the channel closes.
        await self.peer.drain()
        await self.peer.close()
        # Closed together, so one slow socket cannot hold up a hangup answer.
        await asyncio.gather(*(self.detach_sideband(s) for s in list(self.sidebands)))
        self.closed_event.set()

    # -- views for /_sim ------------------------------------------------------------

    def summary(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "hungup": self.hungup,
            "hungup_with": self.hungup_with,
            "hangup_refusals": self.hangup_refusals,
            "created_at": self.created_at,
            "created_at_ms": self.created_at_ms,
            "created_by": dict(self.created_by),
            "session_id": self.conversation.session.get("id"),
            "safety_identifier": self.safety_identifier,
            "sidebands": len(self.sidebands),
            "sideband_attaches": [dict(a) for a in self.sideband_attaches],
            "sideband_refusals": self.sideband_refusals,
            "end_reason": self.end_reason,
            "ended_at_ms": self.ended_at_ms,
        }

    def detail(self) -> dict:
        conv = self.conversation
        return {
            **self.summary(),
            "session": conv.session,
            "client_events": [entry["event"] for entry in self.client_events],
            "client_event_sources": [entry["source"] for entry in self.client_events],
            "server_event_types": [event["type"] for event in self.server_events],
            "items": conv.items.as_list(),
            # Audio lengths are not part of the item JSON; usage checks need them.
            "item_audio_ms": {r.id: r.audio_ms for r in conv.items if r.part_audio_ms},
            "audio_in": self.peer.input_stats.as_dict(),
            "audio_out": self.output_audio.as_dict(),
            "responses": conv.responses_summary(),
            "truncations": [dict(t) for t in conv.truncations],
            "datachannel": self.datachannel.as_dict(),
        }
