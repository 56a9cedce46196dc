"""A loopback-only aiortc client that plays the browser's part in tests."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import re
import time
from array import array
from collections import deque

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from realtime_sim.audio import FRAME_SAMPLES, SAMPLE_RATE, is_voiced
from realtime_sim.loopback import install_loopback_guard
from realtime_sim.peer import frame_rms


def _tone_frame(amplitude: float, freq: float = 440.0) -> bytes:
    # 440 Hz does not fit 20 ms exactly; a tiny click per frame does not matter here.
    return array(
        "h", (int(amplitude * 32767 * math.sin(2 * math.pi * freq * n / SAMPLE_RATE)) for n in range(FRAME_SAMPLES))
    ).tobytes()


class MicrophoneTrack(MediaStreamTrack):
    """A fake microphone: plays queued tone/silence segments, then silence."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._tone = _tone_frame(0.3)
        self._silence = bytes(FRAME_SAMPLES * 2)
        self._queue: deque[bool] = deque()
        self._start: float | None = None
        self._pts = 0

    def speak(self, ms: int) -> None:
        self._queue.extend([True] * (ms // 20))

    def pause(self, ms: int) -> None:
        self._queue.extend([False] * (ms // 20))

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        voiced = self._queue.popleft() if self._queue else False
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(self._tone if voiced else self._silence)
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


class RtcClient:
    """Connects to the simulator like the browser page does, and records everything."""

    def __init__(self) -> None:
        install_loopback_guard()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MicrophoneTrack()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict] = []
        self.audio_frames = 0
        self.voiced_audio_frames = 0
        self.call_id: str | None = None
        self.location: str | None = None
        self.answer_sdp: str | None = None  # as the simulator sent it
        self._changed = asyncio.Event()
        self._opened = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.channel.on("open", self._opened.set)
        self.channel.on("message", self._message)
        self.pc.on("track", self._track)

    def _message(self, text) -> None:
        self.events.append(json.loads(text))
        self._changed.set()

    def _track(self, track) -> None:
        self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.audio_frames += 1
            if is_voiced(frame_rms(frame)):
                self.voiced_audio_frames += 1

    async def connect(self, base_url: str, token: str, *, session: dict | None = None,
                      multipart: bool = False, origin: str | None = None, headers: dict | None = None,
                      honour_max_message_size: bool = True) -> aiohttp.ClientResponse:
        """POST the offer (extra `headers` too) and wait for session.created.

        honour_max_message_size=False plays a peer that ignores the answer's
        a=max-message-size (0 = no limit), so oversized messages reach the simulator.
        """
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {**(headers or {}), "Authorization": f"Bearer {token}"}
        if origin:
            headers["Origin"] = origin
        async with aiohttp.ClientSession() as http:
            if multipart:
                form = aiohttp.FormData()
                form.add_field("sdp", self.pc.localDescription.sdp, content_type="application/sdp")
                if session is not None:
                    form.add_field("session", json.dumps(session), content_type="application/json")
                resp = await http.post(f"{base_url}/v1/realtime/calls", data=form, headers=headers)
            else:
                headers["Content-Type"] = "application/sdp"
                resp = await http.post(f"{base_url}/v1/realtime/calls", data=self.pc.localDescription.sdp,
                                       headers=headers)
            answer = await resp.text()
        if resp.status != 201:
            raise AssertionError(f"calls answered {resp.status}: {answer}")
        self.location = resp.headers["Location"]
        self.call_id = self.location.rsplit("/", 1)[-1]
        self.answer_sdp = answer
        if not honour_max_message_size:
            answer = re.sub(r"a=max-message-size:\d+", "a=max-message-size:0", answer)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(self._opened.wait(), 10)
        await self.wait_for("session.created")
        return resp

    async def offer(self) -> str:
        """The SDP offer, for a server that creates the call itself (the product's flow)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer: str) -> None:
        """Apply the answer the server passed on, and wait until the call is up."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(self._opened.wait(), 10)
        await self.wait_for("session.created")

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    async def wait_for(self, type_: str, predicate=None, timeout: float = 10.0, start: int = 0) -> dict:
        """First event of this type (at index >= start) matching predicate."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[start:]:
                if event["type"] == type_ and (predicate is None or predicate(event)):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {type_} within {timeout}s; got {self.types()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
