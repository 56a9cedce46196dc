"""The simulator's side of a WebRTC call (aiortc): media, data channel, state."""

from __future__ import annotations

import asyncio
import datetime
import fractions
import logging
import time
from typing import Callable

import aiortc.rtcpeerconnection
from aiortc import RTCCertificate, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from .audio import FRAME_SAMPLES, SAMPLE_RATE, InputAudioStats, OutputAudio, rms_s16
from .loopback import install_loopback_guard, strip_offer_candidates

log = logging.getLogger(__name__)
EVENTS_CHANNEL = "oai-events"
MAX_MESSAGE_SIZE_ATTR = "a=max-message-size:"


def set_max_message_size(sdp: str, size: int) -> str:
    """Rewrite the answer's `a=max-message-size` (aiortc always writes 262144).

    A browser reads this attribute and refuses to send larger messages, so the
    simulator advertises the limit it enforces.
    """
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = [f"{MAX_MESSAGE_SIZE_ATTR}{size}" if line.startswith(MAX_MESSAGE_SIZE_ATTR) else line
             for line in sdp.split(newline)]
    return newline.join(lines)


class InvalidOffer(Exception):
    pass


class SimulatorCertificate(RTCCertificate):
    """One DTLS certificate for the calls this simulator answers, its fingerprints worked out once.

    aiortc makes a key, signs a certificate and hashes it three ways for every peer connection; under
    a burst of starts that was 17% of the simulator's CPU, on the machine it shares with the server it
    stands in for. A browser checks only that the certificate matches the answer's fingerprint, so one
    per process (renewed a day before it lapses) is as good to it as one per call.
    """

    _current: SimulatorCertificate | None = None
    _fingerprints = None

    @classmethod
    def generateCertificate(cls) -> SimulatorCertificate:
        current = cls._current
        if current is None or current.expires - datetime.timedelta(days=1) < datetime.datetime.now(datetime.UTC):
            current = cls._current = super().generateCertificate()
        return current

    def getFingerprints(self):
        if self._fingerprints is None:
            self._fingerprints = super().getFingerprints()
        return list(self._fingerprints)


# aiortc's RTCPeerConnection takes no certificate: its constructor calls this module's
# RTCCertificate.generateCertificate(), which a call's peer points at SimulatorCertificate while it
# builds its connection (nothing else runs meanwhile on this thread; another thread building a peer
# then would only share the certificate). The other peers in the process keep their own.
_AIORTC_CERTIFICATE = aiortc.rtcpeerconnection.RTCCertificate


def peer_connection() -> RTCPeerConnection:
    """A peer connection for one call, with the process's certificate and no ICE servers (aiortc would
    otherwise default to a public STUN server)."""
    aiortc.rtcpeerconnection.RTCCertificate = SimulatorCertificate
    try:
        return RTCPeerConnection(RTCConfiguration(iceServers=[]))
    finally:
        aiortc.rtcpeerconnection.RTCCertificate = _AIORTC_CERTIFICATE


def frame_rms(frame: AudioFrame) -> float:
    """RMS (0..1) of a decoded s16 frame, packed or planar."""
    channels = 1 if frame.format.is_planar else len(frame.layout.channels)
    return rms_s16(bytes(frame.planes[0]), frame.samples * channels)


class SpeakerTrack(MediaStreamTrack):
    """Outgoing audio: 48 kHz mono, 20 ms frames paced in real time."""

    kind = "audio"

    def __init__(self, output: OutputAudio) -> None:
        super().__init__()
        self.output = output
        self._start: float | None = None
        self._pts = 0

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
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(self.output.next_frame())
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


class CallPeer:
    """Wraps one RTCPeerConnection; reports to its owner through callbacks."""

    def __init__(
        self,
        *,
        output: OutputAudio,
        on_message: Callable[[str, int], None],
        on_channel_open: Callable[[], None],
        on_audio: Callable[[float, float], None],
        on_state: Callable[[str], None],
    ) -> None:
        install_loopback_guard()
        self.pc = peer_connection()
        self.output = output
        self.input_stats = InputAudioStats()
        self.speaker = SpeakerTrack(output)
        self.channel = None
        self._on_message = on_message
        self._on_channel_open = on_channel_open
        self._on_audio = on_audio
        self._on_state = on_state
        self._tasks: set[asyncio.Task] = set()
        self.closed = False
        self.pc.on("datachannel", self._datachannel)
        self.pc.on("track", self._track)
        self.pc.on("connectionstatechange", self._state_changed)

    @property
    def channel_open(self) -> bool:
        return self.channel is not None and self.channel.readyState == "open"

    async def accept_offer(self, offer_sdp: str, max_message_size: int | None = None) -> str:
        try:
            offer = RTCSessionDescription(sdp=strip_offer_candidates(offer_sdp), type="offer")
            await self.pc.setRemoteDescription(offer)
            if any(t.kind == "audio" for t in self.pc.getTransceivers()):
                self.pc.addTrack(self.speaker)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError, InternalError, etc. on bad SDP
            raise InvalidOffer(str(exc) or type(exc).__name__) from exc
        answer = self.pc.localDescription.sdp
        if max_message_size is not None:
            answer = set_max_message_size(answer, max_message_size)
        return answer

    def send(self, text: str) -> bool:
        if not self.channel_open:
            return False
        try:
            self.channel.send(text)
        except ValueError:  # larger than the browser's own a=max-message-size
            return False
        return True

    async def drain(self, timeout: float = 1.0) -> None:
        """Wait briefly until sent messages are acknowledged by the peer.

        Closing right after a send would lose a last event (the session_expired
        error); SCTP keeps unacknowledged chunks in its outbound queue.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.channel_open and loop.time() < deadline:
            unacked = len(getattr(self.pc.sctp, "_outbound_queue", None) or ())
            if not self.channel.bufferedAmount and not unacked:
                return
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.speaker.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.channel is not None and self.channel.readyState in ("connecting", "open"):
            self.channel.close()  # the browser sees the channel close, then the connection
        await self.pc.close()

    # -- aiortc callbacks ---------------------------------------------------------

    def _datachannel(self, channel) -> None:
        if channel.label != EVENTS_CHANNEL:
            log.info("ignoring data channel %r", channel.label)
            return
        self.channel = channel
        channel.on("message", self._message)
        if channel.readyState == "open":
            self._on_channel_open()
        else:
            channel.on("open", self._on_channel_open)

    def _message(self, message) -> None:
        if isinstance(message, bytes):
            size = len(message)
            message = message.decode("utf-8", "replace")
        else:
            size = len(message.encode("utf-8"))
        self._on_message(message, size)

    def _track(self, track) -> None:
        if track.kind != "audio":
            return
        task = asyncio.ensure_future(self._consume(track))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            rms = frame_rms(frame)
            self.input_stats.record(rms)
            self._on_audio(rms, frame.samples * 1000.0 / frame.sample_rate)

    def _state_changed(self) -> None:
        self._on_state(self.pc.connectionState)
