"""A fake upstream at the one seam (sessions_app.upstream._client), via httpx.MockTransport."""

import json
import time

import httpx


class FakeUpstream:
    def __init__(self):
        self.requests = []
        self.mode = "ok"

    def handler(self, request):
        self.requests.append(request)
        if self.mode == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.mode == "connect_error":
            raise httpx.ConnectError("refused", request=request)
        if self.mode == "bad_json":
            return httpx.Response(200, content=b"<html>not json</html>")
        if self.mode == "wrong_shape":
            return httpx.Response(200, json={"client_secret": {"value": "ek_old", "expires_at": 1}})
        if isinstance(self.mode, int):
            body = {"error": {"message": "upstream says sk-secret-detail", "type": "x", "code": "y", "param": None}}
            return httpx.Response(self.mode, json=body)
        if request.url.path.endswith("/hangup"):
            return httpx.Response(200, json={})
        body = json.loads(request.content)
        return httpx.Response(
            200,
            json={
                "value": "ek_test_0123456789abcdef",
                "expires_at": int(time.time()) + 60,
                "session": {"type": "realtime", "object": "realtime.session", "id": "sess_test1", **body["session"]},
            },
        )

    def client(self):
        return httpx.AsyncClient(base_url="http://upstream.invalid", transport=httpx.MockTransport(self.handler))

    @property
    def last_json(self):
        return json.loads(self.requests[-1].content)
