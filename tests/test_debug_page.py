"""With DEBUG on, Django's technical 500 page shows every frame's local variables: the API key must not be
among them, wherever in the upstream call the failure happens."""

import asyncio
import sys

import aiohttp
import pytest
from django.test import RequestFactory
from django.views.debug import technical_500_response

from sessions_app import upstream

CANARY = "sk-canary-0123456789-must-never-show"


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["transport", "response"])
def test_a_technical_500_inside_an_upstream_call_does_not_show_the_key(settings, monkeypatch, where):
    settings.DEBUG = True
    settings.OPENAI_API_KEY = CANARY
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9"

    async def connect(self, request, *args, **kwargs):
        assert request.headers["Authorization"] == f"Bearer {CANARY}"  # the real value goes out
        raise Boom("the network fell over")  # deep in aiohttp, its frames holding the request's headers

    async def answered(url, headers, body):
        return upstream.Answer(200, {}, b"{}")

    if where == "transport":
        monkeypatch.setattr(aiohttp.TCPConnector, "connect", connect)
    else:
        def broken(*args, **kwargs):
            raise Boom("could not read the answer")

        monkeypatch.setattr(upstream, "_send", answered)
        monkeypatch.setattr(upstream.Answer, "json", broken)
    async def mint():
        try:
            await upstream.create_client_secret({"session": {"type": "realtime"}}, "safety")
        finally:
            await upstream.close()

    try:
        asyncio.run(mint())
    except Boom:
        page = technical_500_response(RequestFactory().post("/api/sessions/"), *sys.exc_info()).content.decode()
    else:
        raise AssertionError("the upstream call did not fail")
    assert "Traceback" in page and "_post" in page or "create_client_secret" in page
    assert CANARY not in page
    assert "Bearer ********" in page or "********************" in page


def test_the_credential_prints_masked():
    value = upstream.Credential(f"Bearer {CANARY}")
    assert CANARY not in repr(value) and CANARY not in repr({"Authorization": value})
    assert value.encode() == f"Bearer {CANARY}".encode()
