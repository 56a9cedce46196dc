"""The one seam to the OpenAI Realtime API (or the local simulator standing in for it).

One aiohttp ClientSession per event loop, for the HTTP requests (with explicit
timeouts) and the sideband WebSockets alike. It was an httpx.AsyncClient: a
request and its answer from a loopback server cost 1.1 ms of CPU with httpx and
0.2 ms with aiohttp, and the two upstream requests were a third of the CPU a
started call cost (a profile of 32 clients starting calls). Failures become UpstreamError
with a status for our own API (502, or 504 on a timeout) and a message fit for
a user; upstream bodies are never logged or passed on, and the API key never
leaves this module. Ephemeral secrets never leave the server: the calls are
created here, and a secret kept for the sideband is sealed.
"""

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import re
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.utils.crypto import salted_hmac
from django.views.decorators.debug import sensitive_variables

log = logging.getLogger(__name__)

_sessions = weakref.WeakKeyDictionary()
# Where the 201 of POST /v1/realtime/calls says the new call lives.
CALL_LOCATION = re.compile(r"/v1/realtime/calls/(rtc_[A-Za-z0-9_-]{1,120})")
SAFETY_HEADER = "OpenAI-Safety-Identifier"


class UpstreamError(Exception):
    """`status` is for our own API's answer; `http_status` is the upstream's, when it answered."""

    def __init__(self, status, code, message, http_status=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.http_status = http_status


# What a sideband's connection raises when it breaks under a send or a read.
DROPPED = (aiohttp.ClientError, ConnectionError)


class SidebandDropped(UpstreamError):
    """The sideband's connection broke while it was in use (reset, or closed under a send)."""

    def __init__(self):
        super().__init__(502, "upstream_error", "The sideband's connection was lost.")


def _session():
    # A ClientSession belongs to the loop it was made on; one per loop, shared by every request and
    # sideband (a new one per socket built a new TLS context, the CA store read again, each time).
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        # No cap on connections: every running call's sideband holds one for its whole life, and
        # aiohttp's default cap (100) made the 101st call's sideband, and every request after it, wait.
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5))
        _sessions[loop] = session
    return session


async def close():
    """Close this loop's session (its pooled connections), when the loop is about to end."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


@dataclass
class Answer:
    """An upstream HTTP answer, read whole."""

    status: int
    headers: dict  # case-insensitive (multidict)
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


@sensitive_variables()
async def _send(url, headers, body):
    """The one HTTP seam: POST `body` to `url`, the answer read whole. Raises asyncio.TimeoutError or
    aiohttp.ClientError (tests put a fake upstream here)."""
    timeout = aiohttp.ClientTimeout(total=settings.UPSTREAM_TIMEOUT_SECONDS, connect=5)
    async with _session().post(url, data=body, headers=headers, timeout=timeout) as response:
        return Answer(response.status, response.headers.copy(), await response.read())


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
    return _fernet_for(settings.SECRET_KEY)


@functools.lru_cache(maxsize=4)
def _fernet_for(secret_key):
    # Derived once per SECRET_KEY, not on every seal and unseal (each start seals, each attach may unseal).
    key = salted_hmac("sessions_app.upstream.sealed-secret", "v1", secret=secret_key, algorithm="sha256").digest()
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
    return _safety_identifier(user.pk, settings.SECRET_KEY)


@functools.lru_cache(maxsize=1024)
def _safety_identifier(pk, secret_key):
    digest = salted_hmac("openai-safety-identifier", str(pk), secret=secret_key).hexdigest()
    return hashlib.sha256(digest.encode()).hexdigest()[:32]


def sideband_url(call_id):
    base = settings.OPENAI_BASE_URL.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}/v1/realtime?call_id={call_id}"


@sensitive_variables()
async def _post(path, what, headers, body=b"", content_type=None):
    if content_type:
        headers = {**headers, "Content-Type": content_type}
    try:
        response = await _send(f"{settings.OPENAI_BASE_URL}{path}", headers, body)
    except asyncio.TimeoutError:
        log.warning("upstream %s timed out", what)
        raise UpstreamError(504, "upstream_timeout", "The realtime service did not answer in time. Try again.")
    except aiohttp.ClientError as exc:
        log.warning("upstream %s failed: %s", what, type(exc).__name__)
        raise UpstreamError(502, "upstream_error", "The realtime service could not be reached. Try again.")
    if response.status >= 400:
        log.warning("upstream %s refused with HTTP %s", what, response.status)
        if response.status == 429:
            message = "The realtime service is rate limiting this account. Wait a moment and try again."
        elif response.status in (401, 403):
            message = "The realtime service refused this server's credentials. Tell an administrator."
        else:
            message = f"The realtime service refused the request (HTTP {response.status})."
        raise UpstreamError(502, "upstream_error", message, response.status)
    return response


@sensitive_variables()
async def create_client_secret(body, safety_id):
    """POST /v1/realtime/client_secrets; returns (value, expires_at, session)."""
    response = await _post("/v1/realtime/client_secrets", "client secret", _headers(safety_id),
                           json.dumps(body).encode(), "application/json")
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
    headers = {**_headers(safety_id, secret=secret), "Accept": "application/sdp"}
    response = await _post("/v1/realtime/calls", "call", headers, sdp.encode("utf-8"), "application/sdp")
    match = CALL_LOCATION.fullmatch(urlsplit(response.headers.get("Location", "")).path)
    answer = response.text
    if response.status == 201 and match and answer.startswith("v=0"):
        return answer, match.group(1)
    log.warning("upstream call answer was not a 201 with an SDP answer and a call id")
    if match:
        with contextlib.suppress(UpstreamError):
            await hangup(match.group(1), seal(secret))
    raise UpstreamError(502, "upstream_error", "The realtime service sent an answer this server cannot read.")


@sensitive_variables()
async def hangup(call_id, sealed_secret=""):
    """POST /v1/realtime/calls/{id}/hangup: end the call upstream, with the API key; where the key is told
    the call does not exist (404), again with the call's own secret (`sealed_secret`, as stored), unsealed
    only then: a call created with an ephemeral secret has been unknown to the key where its own secret
    worked (FACTS section 7), and which one hangup takes is unconfirmed. Told 404 by every credential the
    server has, the call has ended already: not an error, and asking again would not help."""
    path = f"/v1/realtime/calls/{call_id}/hangup"
    try:
        await _post(path, "hangup", _headers())
        return
    except UpstreamError as exc:
        if exc.http_status != 404:
            raise
    secret = unseal(sealed_secret)
    if not secret:
        return
    try:
        await _post(path, "hangup with the call's secret", _headers(secret=secret))
    except UpstreamError as exc:
        # A secret refused (401, 403) after the key was told the call does not exist: the key is the one that
        # hangs up, and the call is gone; asking again would get the same two answers.
        if exc.http_status not in (401, 403, 404):
            raise


@contextlib.asynccontextmanager
async def sideband(call_id, secret=None):
    """The server's own WebSocket to a running call (`?call_id=`): with the API key,
    or with the call's own ephemeral secret where the key is refused."""
    try:
        ws = await _session().ws_connect(
            sideband_url(call_id), headers=_headers(secret=secret), heartbeat=20, max_msg_size=16 << 20
        )
    except aiohttp.WSServerHandshakeError as exc:
        log.warning("upstream sideband refused with HTTP %s", exc.status)
        raise UpstreamError(502, "upstream_error", f"The realtime service refused the sideband (HTTP {exc.status}).",
                            exc.status) from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("upstream sideband failed: %s", type(exc).__name__)
        raise UpstreamError(502, "upstream_error", "The realtime service could not be reached for the sideband.")
    try:
        yield ws
    except DROPPED as exc:
        log.info("upstream sideband dropped: %s", type(exc).__name__)
        raise SidebandDropped() from None
    finally:
        await ws.close()
