"""With DEBUG on, Django's technical 500 page shows every frame's local variables: the API key must not be
among them, wherever in the upstream call the failure happens."""

import asyncio
import sys

import httpx
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

    def handler(request):
        assert request.headers["Authorization"] == f"Bearer {CANARY}"  # the real value goes out
        if where == "transport":
            raise Boom("the network fell over")
        return httpx.Response(200, content=b"{}")

    monkeypatch.setattr(upstream, "_client", lambda: httpx.AsyncClient(
        base_url="http://upstream.invalid", transport=httpx.MockTransport(handler)))
    if where == "response":
        def broken(*args, **kwargs):
            raise Boom("could not read the answer")

        monkeypatch.setattr(httpx.Response, "json", broken)
    try:
        asyncio.run(upstream.create_client_secret({"session": {"type": "realtime"}}, "safety"))
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
