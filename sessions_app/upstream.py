"""The one seam to the OpenAI Realtime API (or the local simulator standing in for it).

A shared httpx.AsyncClient per event loop with explicit timeouts. Failures become
UpstreamError with a status for our own API (502, or 504 on a timeout) and a
message fit for a user; upstream bodies are never logged or passed on, and the
API key never leaves this module. Ephemeral secrets never leave the server:
the calls are created here, and a secret kept for the sideband is sealed.
"""

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import weakref
from urllib.parse import urlsplit

import aiohttp
import httpx
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.utils.crypto import salted_hmac
from django.views.decorators.debug import sensitive_variables

log = logging.getLogger(__name__)

_clients = weakref.WeakKeyDictionary()
_ws_sessions = weakref.WeakKeyDictionary()
# Where the 201 of POST /v1/realtime/calls says the new call lives.
CALL_LOCATION = re.compile(r"/v1/realtime/calls/(rtc_[A-Za-z0-9_-]{1,120})")
SAFETY_HEADER = "OpenAI-Safety-Identifier"


class UpstreamError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SidebandRefused(UpstreamError):
    """The upstream answered the sideband handshake with an HTTP error (`http_status`)."""

    def __init__(self, http_status):
        super().__init__(502, "upstream_error", f"The realtime service refused the sideband (HTTP {http_status}).")
        self.http_status = http_status


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


class Credential(str):
    """An Authorization header value that does not show itself where Python shows values: a debug
    page's frame locals or a logged dict of headers print the mask (repr); HTTP gets the value."""

    def __repr__(self):
        return "'Bearer ********'"


@sensitive_variables()
def _headers(safety_identifier=None, secret=None):
    headers = {"Authorization": Credential(f"Bearer {secret or settings.OPENAI_API_KEY}")}
    if safety_identifier:
        headers[SAFETY_HEADER] = safety_identifier
    return headers


def _fernet():
    key = salted_hmac("sessions_app.upstream.sealed-secret", "v1", algorithm="sha256").digest()
    return Fernet(base64.urlsafe_b64encode(key))


def seal(secret):
    """An ephemeral secret encrypted with a key derived from SECRET_KEY, fit to store."""
    return _fernet().encrypt(secret.encode()).decode()


def unseal(sealed):
    """The secret back, or None if it cannot be read (empty, or SECRET_KEY changed)."""
    if not sealed:
        return None
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken:
        return None


def safety_identifier(user):
    """A stable, non-reversible id for the user, as OpenAI asks multi-user apps to send."""
    digest = salted_hmac("openai-safety-identifier", str(user.pk)).hexdigest()
    return hashlib.sha256(digest.encode()).hexdigest()[:32]


def sideband_url(call_id):
    base = settings.OPENAI_BASE_URL.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}/v1/realtime?call_id={call_id}"


@sensitive_variables()
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


@sensitive_variables()
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


@sensitive_variables()
async def create_call(secret, sdp, safety_id):
    """POST /v1/realtime/calls with the browser's raw SDP offer and the ephemeral secret.

    Returns (SDP answer, call id from Location). An answer the server cannot use
    is a failure; a call it created anyway is hung up.
    """
    headers = {**_headers(safety_id, secret=secret), "Content-Type": "application/sdp", "Accept": "application/sdp"}
    response = await _post("/v1/realtime/calls", "call", content=sdp.encode("utf-8"), headers=headers)
    match = CALL_LOCATION.fullmatch(urlsplit(response.headers.get("Location", "")).path)
    answer = response.text
    if response.status_code == 201 and match and answer.startswith("v=0"):
        return answer, match.group(1)
    log.warning("upstream call answer was not a 201 with an SDP answer and a call id")
    if match:
        with contextlib.suppress(UpstreamError):
            await hangup(match.group(1))
    raise UpstreamError(502, "upstream_error", "The realtime service sent an answer this server cannot read.")


async def hangup(call_id):
    """POST /v1/realtime/calls/{id}/hangup: end the call upstream."""
    await _post(f"/v1/realtime/calls/{call_id}/hangup", "hangup", headers=_headers())


def _ws_session():
    # One per loop, shared by every sideband: a new session per socket built a
    # new TLS context (the CA store read again) each time.
    loop = asyncio.get_running_loop()
    session = _ws_sessions.get(loop)
    if session is None or session.closed:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5))
        _ws_sessions[loop] = session
    return session


@contextlib.asynccontextmanager
async def sideband(call_id, secret=None):
    """The server's own WebSocket to a running call (`?call_id=`): with the API key,
    or with the call's own ephemeral secret where the key is refused."""
    try:
        ws = await _ws_session().ws_connect(
            sideband_url(call_id), headers=_headers(secret=secret), heartbeat=20, max_msg_size=16 << 20
        )
    except aiohttp.WSServerHandshakeError as exc:
        log.warning("upstream sideband refused with HTTP %s", exc.status)
        raise SidebandRefused(exc.status) from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("upstream sideband failed: %s", type(exc).__name__)
        raise UpstreamError(502, "upstream_error", "The realtime service could not be reached for the sideband.")
    try:
        yield ws
    finally:
        await ws.close()
