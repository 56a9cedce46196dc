"""A fake upstream at the one HTTP seam (sessions_app.upstream._send): what the server sends is
recorded, and each request gets an answer, or the error aiohttp would raise."""

import asyncio
import itertools
import json
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from sessions_app.upstream import Answer


def answer(status, json_body=None, text=None, headers=None):
    body = json.dumps(json_body).encode() if json_body is not None else (text or "").encode()
    return Answer(status, CIMultiDict(headers or {}), body)

# What Chromium offers for one microphone and the oai-events data channel (trimmed, as it arrives).
OFFER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:Fo1x\r\na=ice-pwd:0bN5Hd2h3Zyq8bH9Xc3lpQe1\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 3A:2B:1C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09\r\n"
    "a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=msid:- 7d1c2b3a-track\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:Fo1x\r\na=ice-pwd:0bN5Hd2h3Zyq8bH9Xc3lpQe1\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 3A:2B:1C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09\r\n"
    "a=setup:actpass\r\na=mid:1\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"
)
ANSWER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
SECRET = "ek_test_0123456789abcdef"


class FakeUpstream:
    """Answers client_secrets, calls and hangup; `mode` fails every request, `calls_mode` only the calls step."""

    def __init__(self):
        self.requests = []
        self.mode = "ok"
        self.calls_mode = "ok"
        self._ids = itertools.count(1)

    def _failure(self, request, mode):
        if mode == "timeout":
            raise asyncio.TimeoutError()
        if mode == "connect_error":
            raise aiohttp.ClientConnectionError("refused")
        if mode == "bad_json":
            return answer(200, text="<html>not json</html>")
        if mode == "wrong_shape":
            return answer(200, {"client_secret": {"value": "ek_old", "expires_at": 1}})
        if isinstance(mode, int):
            body = {"error": {"message": "upstream says sk-secret-detail", "type": "x", "code": "y", "param": None}}
            return answer(mode, body)
        return None

    async def send(self, url, headers, body):
        request = SimpleNamespace(url=urlsplit(url), headers=CIMultiDict(headers), content=body)
        return self.handler(request)

    def handler(self, request):
        self.requests.append(request)
        failed = self._failure(request, self.mode)
        if failed is not None:
            return failed
        if request.url.path.endswith("/hangup"):
            return answer(200, {})
        if request.url.path == "/v1/realtime/calls":
            return self._call(request)
        body = json.loads(request.content)
        return answer(
            200,
            {
                "value": SECRET,
                "expires_at": int(time.time()) + 60,
                "session": {"type": "realtime", "object": "realtime.session", "id": "sess_test1", **body["session"]},
            },
        )

    def _call(self, request):
        if self.calls_mode == "no_location":
            return answer(201, text=ANSWER)
        if self.calls_mode == "not_sdp":
            return answer(201, text="<html>", headers={"Location": "/v1/realtime/calls/rtc_badanswer"})
        failed = self._failure(request, self.calls_mode)
        if failed is not None:
            return failed
        call_id = f"rtc_test{next(self._ids)}"
        return answer(201, text=ANSWER, headers={"Location": f"/v1/realtime/calls/{call_id}"})

    @property
    def secret_requests(self):
        return [r for r in self.requests if r.url.path == "/v1/realtime/client_secrets"]

    @property
    def call_requests(self):
        return [r for r in self.requests if r.url.path == "/v1/realtime/calls"]

    @property
    def last_json(self):
        return json.loads(self.secret_requests[-1].content)
