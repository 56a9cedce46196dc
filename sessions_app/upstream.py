"""The one seam to the OpenAI Realtime API (or the local simulator standing in for it).

A shared httpx.AsyncClient per event loop with explicit timeouts. Failures become
UpstreamError with a status for our own API (502, or 504 on a timeout) and a
message fit for a user; upstream bodies are never logged or passed on, and the
API key never leaves this module.
"""

import asyncio
import contextlib
import hashlib
import logging
import weakref

import aiohttp
import httpx
from django.conf import settings
from django.utils.crypto import salted_hmac

log = logging.getLogger(__name__)

_clients = weakref.WeakKeyDictionary()


class UpstreamError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _client():
    # An AsyncClient belongs to the loop it was first used on (and to one base URL).
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed or str(client.base_url).rstrip("/") != settings.OPENAI_BASE_URL:
        timeout = httpx.Timeout(settings.UPSTREAM_TIMEOUT_SECONDS, connect=5.0)
        # Few idle connections: httpcore checks every idle one on each request.
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=16)
        client = httpx.AsyncClient(base_url=settings.OPENAI_BASE_URL, timeout=timeout, limits=limits)
        _clients[loop] = client
    return client


def _headers(safety_identifier=None):
    headers = {"Authorization": f"Bearer {settings.OPENAI_API_KEY}"}
    if safety_identifier:
        headers["OpenAI-Safety-Identifier"] = safety_identifier
    return headers


def safety_identifier(user):
    """A stable, non-reversible id for the user, as OpenAI asks multi-user apps to send."""
    digest = salted_hmac("openai-safety-identifier", str(user.pk)).hexdigest()
    return hashlib.sha256(digest.encode()).hexdigest()[:32]


def calls_url():
    """Where the browser posts its SDP offer."""
    return f"{settings.OPENAI_BASE_URL}/v1/realtime/calls"


def sideband_url(call_id):
    base = settings.OPENAI_BASE_URL.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}/v1/realtime?call_id={call_id}"


async def _post(path, what, **kwargs):
    try:
        response = await _client().post(path, **kwargs)
    except httpx.TimeoutException:
        log.warning("upstream %s timed out", what)
        raise UpstreamError(504, "upstream_timeout", "The realtime service did not answer in time. Try again.")
    except httpx.HTTPError as exc:
        log.warning("upstream %s failed: %s", what, type(exc).__name__)
        raise UpstreamError(502, "upstream_error", "The realtime service could not be reached. Try again.")
    if response.status_code >= 400:
        log.warning("upstream %s refused with HTTP %s", what, response.status_code)
        if response.status_code == 429:
            message = "The realtime service is rate limiting this account. Wait a moment and try again."
        elif response.status_code in (401, 403):
            message = "The realtime service refused this server's credentials. Tell an administrator."
        else:
            message = f"The realtime service refused the request (HTTP {response.status_code})."
        raise UpstreamError(502, "upstream_error", message)
    return response


async def create_client_secret(body, safety_id):
    """POST /v1/realtime/client_secrets; returns (value, expires_at, session)."""
    response = await _post("/v1/realtime/client_secrets", "client secret", json=body, headers=_headers(safety_id))
    try:
        data = response.json()
        value, expires_at = data["value"], data["expires_at"]
        session = data.get("session") or {}
    except (ValueError, KeyError, TypeError):
        log.warning("upstream client secret answer was not the expected JSON")
        raise UpstreamError(502, "upstream_error", "The realtime service sent an answer this server cannot read.")
    if not (isinstance(value, str) and value and isinstance(expires_at, int) and isinstance(session, dict)):
        log.warning("upstream client secret answer had wrong types")
        raise UpstreamError(502, "upstream_error", "The realtime service sent an answer this server cannot read.")
    return value, expires_at, session


async def hangup(call_id):
    """POST /v1/realtime/calls/{id}/hangup: end the call upstream."""
    await _post(f"/v1/realtime/calls/{call_id}/hangup", "hangup", headers=_headers())


@contextlib.asynccontextmanager
async def sideband(call_id):
    """The server's own WebSocket to a running call (`?call_id=`, API key)."""
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5))
    try:
        try:
            ws = await http.ws_connect(sideband_url(call_id), headers=_headers(), heartbeat=20, max_msg_size=16 << 20)
        except aiohttp.WSServerHandshakeError as exc:
            log.warning("upstream sideband refused with HTTP %s", exc.status)
            raise UpstreamError(502, "upstream_error", f"The realtime service refused the sideband (HTTP {exc.status}).")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("upstream sideband failed: %s", type(exc).__name__)
            raise UpstreamError(502, "upstream_error", "The realtime service could not be reached for the sideband.")
        try:
            yield ws
        finally:
            await ws.close()
    finally:
        await http.close()
