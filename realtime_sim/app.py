"""HTTP surface: the GA Realtime endpoints, the sideband socket, and /_sim controls."""

from __future__ import annotations

import json
import logging
import time

from aiohttp import WSMsgType, web

from . import ids
from .call import Call
from .config import credential_allowed
from .faults import apply_fault, apply_sideband_fault, parse_fault
from .peer import InvalidOffer
from .schema import (
    RequestError,
    apply_session_update,
    effective_session,
    validate_client_secret_request,
    validate_session,
)
from .state import Secret, SimState

log = logging.getLogger(__name__)
STATE_KEY = web.AppKey("realtime_sim_state", SimState)
CORS_HEADERS = {
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Expose-Headers": "Location",
    "Access-Control-Max-Age": "600",
}
SAFETY_HEADER = "OpenAI-Safety-Identifier"
SCRIPT_KEYS = ("text", "usage", "function_call", "user_transcript")


def _error(status: int, message: str, code: str | None, param: str | None = None,
           type_: str = "invalid_request_error") -> web.Response:
    return web.json_response(RequestError(message, param, code, status=status, type_=type_).envelope(),
                             status=status)


def _from_request_error(exc: RequestError) -> web.Response:
    return web.json_response(exc.envelope(), status=exc.status)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _unauthorized(message: str = "Incorrect API key provided.") -> web.Response:
    return _error(401, message, "invalid_api_key")


BETA_CLOSE_CODE = 4000


def _beta_refused() -> web.Response:
    return _error(400, "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
                  "beta_api_shape_disabled")


def _redacted_headers(request: web.Request) -> dict:
    headers = {}
    for name, value in request.headers.items():
        if name.lower() == "authorization":
            value = "Bearer <redacted>"  # the key itself is never recorded
        elif name.lower() == "cookie":
            continue
        headers[name] = value
    return headers


def _state(request: web.Request) -> SimState:
    return request.app[STATE_KEY]


# --- middleware ----------------------------------------------------------------------

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


@web.middleware
async def loopback_only(request: web.Request, handler):
    """Answer loopback names only, so that a web page cannot reach the simulator by rebinding a name of
    its own to 127.0.0.1; and keep the test controls from browser pages altogether (a cross-site form
    posts without a preflight), since they reset calls, inject faults and show what was minted."""
    host = (request.host or "").rsplit(":", 1)[0]
    if host not in LOOPBACK_NAMES:
        return _error(403, "This simulator answers only on loopback names.", "forbidden_host")
    if request.path.startswith("/_sim/") and "Origin" in request.headers:
        return _error(403, "The simulator's test controls do not answer web pages.", "forbidden_origin")
    return await handler(request)

@web.middleware
async def cors_and_errors(request: web.Request, handler):
    """OpenAI error envelopes for /v1 router errors; CORS headers for browser pages."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/v1/") and not request.path.startswith("/_sim/"):
            raise
        code = "not_found" if exc.status == 404 else ("method_not_allowed" if exc.status == 405 else None)
        response = _error(exc.status, exc.reason or "HTTP error", code)
    origin = request.headers.get("Origin")
    if origin and request.path.startswith("/v1/") and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers.update(CORS_HEADERS)
    return response


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)


# --- /v1/realtime/client_secrets -------------------------------------------------------

async def create_client_secret(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    faulted = await apply_fault(state.faults.take("client_secrets"), request)
    if faulted is not None:
        return faulted
    if _bearer(request) != state.api_key:
        return _unauthorized()
    state.client_secret_requests += 1
    raw = await request.text()
    record = {
        "headers": _redacted_headers(request),
        "safety_identifier": request.headers.get(SAFETY_HEADER),
        "body": raw,
        "status": None,
        "at": state.now(),
    }
    state.last_client_secret_request = record
    try:
        body = json.loads(raw) if raw.strip() else {}
        record["body"] = body
    except ValueError:
        record["status"] = 400
        return _error(400, "We could not parse the JSON body of your request.", "invalid_json")
    if request.headers.get("OpenAI-Beta"):
        record["status"] = 400
        return _beta_refused()
    try:
        ttl, session_request = validate_client_secret_request(body)
    except RequestError as exc:
        record["status"] = exc.status
        return _from_request_error(exc)
    now = int(state.now())
    value = ids.ephemeral_key()
    session = effective_session(session_request, ids.session_id(), expires_at=0)
    state.secrets[value] = Secret(value, now + ttl, session, record["safety_identifier"], now)
    record["status"] = 200
    return web.json_response({"value": value, "expires_at": now + ttl, "session": session})


# --- /v1/realtime/calls ------------------------------------------------------------------

def _looks_like_sdp(sdp: str) -> bool:
    return sdp.lstrip().startswith("v=0") and "\nm=" in sdp


async def _read_multipart(request: web.Request) -> tuple[str | None, str | None]:
    sdp = session_text = None
    reader = await request.multipart()
    async for part in reader:
        if part.name == "sdp":
            sdp = await part.text()
        elif part.name == "session":
            session_text = await part.text()
        else:
            raise RequestError(f"Unknown parameter: '{part.name}'.", part.name, "unknown_parameter")
    return sdp, session_text


async def create_call(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    faulted = await apply_fault(state.faults.take("calls"), request)
    if faulted is not None:
        return faulted
    token = _bearer(request)
    secret = state.secrets.get(token or "")
    if token is None or (token != state.api_key and secret is None):
        return _unauthorized()
    if secret is not None and state.valid_secret(token) is None:
        return _unauthorized("The ephemeral client secret has expired.")
    if request.headers.get("OpenAI-Beta"):
        return _beta_refused()
    content_type = request.content_type
    session_request = None
    try:
        if content_type == "application/sdp":
            sdp = await request.text()
        elif content_type == "multipart/form-data":
            sdp, session_text = await _read_multipart(request)
            if sdp is None:
                raise RequestError("Missing required parameter: 'sdp'.", "sdp", "missing_required_parameter")
            if session_text is not None:
                try:
                    session_request = json.loads(session_text)
                except ValueError:
                    raise RequestError("The 'session' part is not valid JSON.", "session", "invalid_json") from None
                validate_session(session_request, "session")
        else:
            raise RequestError(
                f"Unsupported content type '{content_type}'; use application/sdp or multipart/form-data.",
                None, "unsupported_content_type", status=415)
    except RequestError as exc:
        return _from_request_error(exc)
    if not _looks_like_sdp(sdp):
        return _error(400, "The SDP offer is malformed.", "invalid_offer", "sdp")

    config = state.config
    created_at = state.now()
    expires_at = int(created_at + config.call_max_seconds)  # the duration cap (60 minutes by default)
    if secret is not None:
        # The secret carries the config; a multipart session part may refine it.
        session = dict(secret.session, expires_at=expires_at)
        if session_request:
            session = apply_session_update(session, session_request)
    else:
        session = effective_session(session_request or {"type": "realtime"}, ids.session_id(), expires_at)
    safety = request.headers.get(SAFETY_HEADER) or (secret.safety_identifier if secret else None)
    created_by = {
        "auth": "ephemeral" if secret is not None else "api_key",
        "user_agent": request.headers.get("User-Agent"),
        "origin": request.headers.get("Origin"),
        "content_type": content_type,
    }
    call = Call(ids.call_id(), session, safety_identifier=safety, config=config, clock=state.now,
                created_at=created_at, created_by=created_by, secret=token if secret is not None else None)
    try:
        answer = await call.peer.accept_offer(sdp, max_message_size=call.max_message_bytes)
    except InvalidOffer as exc:
        await call.close("invalid_offer")
        return _error(400, f"The SDP offer could not be applied: {exc}", "invalid_offer", "sdp")
    state.calls[call.id] = call
    call.start_timer()
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={"Location": f"/v1/realtime/calls/{call.id}"},
    )


async def hangup_call(request: web.Request) -> web.StreamResponse:
    """Hang a call up, subject to the hangup_auth setting; a credential it refuses gets 404, as a sideband does."""
    state = _state(request)
    faulted = await apply_fault(state.faults.take("hangup"), request)
    if faulted is not None:
        return faulted
    token = _bearer(request)
    refused = _refused_bearer(state, token)
    if refused is not None:
        return refused
    call_id = request.match_info["call_id"]
    call = state.calls.get(call_id)
    if call is None:
        return _call_not_found(call_id)
    auth = _call_credential(state, token, call)
    if auth is None or not credential_allowed(state.config.hangup_auth, auth):
        call.hangup_refusals += 1
        return _call_not_found(call_id)
    await call.hangup(auth)
    return web.json_response({})


def _refused_bearer(state: SimState, token: str | None) -> web.Response | None:
    """401 for a bearer the simulator does not know or an expired `ek_`; None for the API key or a valid `ek_`."""
    if token is None or (token != state.api_key and token not in state.secrets):
        return _unauthorized()
    if token != state.api_key and state.valid_secret(token) is None:
        return _unauthorized("The ephemeral client secret has expired.")
    return None


def _call_credential(state: SimState, token: str, call: Call) -> str | None:
    """"api_key", "call_secret" (the `ek_` that created this call), or None (another call's, or none's)."""
    if token == state.api_key:
        return "api_key"
    return "call_secret" if call.owns_secret(token) else None


def _call_not_found(call_id: str) -> web.Response:
    return _error(404, f"Call '{call_id}' not found.", "call_id_not_found", "call_id")


# --- sideband WebSocket --------------------------------------------------------------


async def beta_call(request: web.Request) -> web.Response:
    """The beta interface's SDP exchange (`POST /v1/realtime?model=...`): shut down, refused as such."""
    token = _bearer(request)
    state = _state(request)
    if token is None or (token != state.api_key and state.valid_secret(token) is None):
        return _unauthorized()
    return _beta_refused()


async def sideband(request: web.Request) -> web.StreamResponse:
    """Attach a server's WebSocket to a call, subject to the sideband_auth setting.

    A credential the setting refuses gets the 404 production peers saw, not a 401.
    """
    state = _state(request)
    faulted = await apply_sideband_fault(state.faults.take("sideband"), request)
    if faulted is not None:
        return faulted
    token = _bearer(request)
    refused = _refused_bearer(state, token)
    if refused is not None:
        return refused
    if request.headers.get("OpenAI-Beta"):
        # A WebSocket with the beta header is taken, then closed with the beta shape's code (FACTS section 7).
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        await ws.close(code=BETA_CLOSE_CODE, message=b"beta_api_shape_disabled")
        return ws
    call_id = request.query.get("call_id")
    if not call_id:
        return _error(400, "The simulator only serves sideband connections: pass ?call_id=rtc_...",
                      "missing_required_parameter", "call_id")
    call = state.calls.get(call_id)
    if call is None or call.state == "closed":
        return _call_not_found(call_id)
    auth = _call_credential(state, token, call)
    if auth is None or not credential_allowed(state.config.sideband_auth, auth):
        call.sideband_refusals += 1
        return _call_not_found(call_id)
    ws = web.WebSocketResponse(heartbeat=None, timeout=2.0, max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    attached = call.attach_sideband(ws, request.transport, auth)
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                call.client_event(message.data, "sideband")
            elif message.type == WSMsgType.BINARY:
                call.client_event(message.data.decode("utf-8", "replace"), "sideband")
            elif message.type == WSMsgType.ERROR:
                break
    finally:
        await call.detach_sideband(attached)
    return ws


# --- /_sim controls --------------------------------------------------------------------

def _find_call(request: web.Request) -> Call | None:
    return _state(request).calls.get(request.match_info["call_id"])


async def _json_body(request: web.Request) -> object:
    try:
        return await request.json()
    except ValueError:
        raise RequestError("Body must be JSON.", None, "invalid_json") from None


async def sim_state(request: web.Request) -> web.Response:
    state = _state(request)
    now = state.now()
    return web.json_response({
        "now": now,
        "clock_offset": state.clock_offset,
        "calls": [call.summary() for call in state.calls.values()],
        "secrets": {"issued": len(state.secrets),
                    "valid": sum(1 for s in state.secrets.values() if now < s.expires_at)},
        "client_secret_requests": state.client_secret_requests,
        "last_client_secret_request": state.last_client_secret_request,
        "faults": state.faults.as_list(),
        "config": state.config.as_dict(),
    })


async def sim_latest_secret_request(request: web.Request) -> web.Response:
    record = _state(request).last_client_secret_request
    if record is None:
        return _error(404, "No client_secrets request seen yet.", "not_found")
    return web.json_response(record)


async def sim_calls(request: web.Request) -> web.Response:
    return web.json_response([call.summary() for call in _state(request).calls.values()])


async def sim_call(request: web.Request) -> web.Response:
    call = _find_call(request)
    if call is None:
        return _error(404, "Unknown call.", "call_id_not_found")
    return web.json_response(call.detail())


async def sim_call_events(request: web.Request) -> web.Response:
    call = _find_call(request)
    if call is None:
        return _error(404, "Unknown call.", "call_id_not_found")
    return web.json_response(call.server_events)


async def sim_call_script(request: web.Request) -> web.Response:
    call = _find_call(request)
    if call is None:
        return _error(404, "Unknown call.", "call_id_not_found")
    try:
        script = await _json_body(request)
        if not isinstance(script, dict):
            raise RequestError("Script must be a JSON object.", None, "invalid_type")
        for key in script:
            if key not in SCRIPT_KEYS:
                raise RequestError(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
        if "function_call" in script:
            fc = script["function_call"]
            if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
                raise RequestError("'function_call' needs a 'name'.", "function_call.name",
                                   "missing_required_parameter")
        if "usage" in script and not isinstance(script["usage"], dict):
            raise RequestError("'usage' must be an object.", "usage", "invalid_type")
    except RequestError as exc:
        return _from_request_error(exc)
    call.conversation.set_script(script)
    return web.json_response({"script": call.conversation.script,
                              "user_transcript": call.conversation.user_transcript})


async def sim_call_client_event(request: web.Request) -> web.Response:
    """A client event into the call, as a sideband of the server's would send it (no socket needed)."""
    call = _find_call(request)
    if call is None:
        return _error(404, "Unknown call.", "call_id_not_found")
    try:
        event = await _json_body(request)
    except RequestError as exc:
        return _from_request_error(exc)
    call.client_event(json.dumps(event), "test")
    return web.json_response({"sent": True})


async def sim_drop_sidebands(request: web.Request) -> web.Response:
    """Abort the call's sideband sockets without close frames; the call goes on."""
    call = _find_call(request)
    if call is None:
        return _error(404, "Unknown call.", "call_id_not_found")
    return web.json_response({"dropped": call.drop_sidebands()})


async def sim_get_config(request: web.Request) -> web.Response:
    return web.json_response(_state(request).config.as_dict())


async def sim_set_config(request: web.Request) -> web.Response:
    """Update some settings; an unknown key or a wrong type changes nothing and answers 400."""
    config = _state(request).config
    try:
        config.update(await _json_body(request))
    except RequestError as exc:
        return _from_request_error(exc)
    return web.json_response(config.as_dict())


async def sim_add_fault(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        fault = parse_fault(await _json_body(request))
    except RequestError as exc:
        return _from_request_error(exc)
    state.faults.add(fault)
    return web.json_response({"faults": state.faults.as_list()})


async def sim_list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": _state(request).faults.as_list()})


async def sim_clear_faults(request: web.Request) -> web.Response:
    _state(request).faults.clear()
    return web.json_response({"faults": []})


async def sim_clock(request: web.Request) -> web.Response:
    """{"advance_s": n} moves the simulator clock forward; {"offset_s": n} sets it."""
    state = _state(request)
    try:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise RequestError("Body must be an object.", None, "invalid_type")
        if "offset_s" in body:
            state.clock_offset = float(body["offset_s"])
        state.clock_offset += float(body.get("advance_s", 0))
    except (RequestError, TypeError, ValueError) as exc:
        if isinstance(exc, RequestError):
            return _from_request_error(exc)
        return _error(400, "advance_s / offset_s must be numbers.", "invalid_type")
    return web.json_response({"now": state.now(), "clock_offset": state.clock_offset, "wall": time.time()})


async def sim_reset(request: web.Request) -> web.Response:
    await _state(request).reset()
    return web.json_response({"reset": True})


def build_app(state: SimState) -> web.Application:
    app = web.Application(middlewares=[loopback_only, cors_and_errors], client_max_size=32 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_post("/v1/realtime/client_secrets", create_client_secret)
    app.router.add_post("/v1/realtime/calls", create_call)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", hangup_call)
    app.router.add_get("/v1/realtime", sideband)
    app.router.add_post("/v1/realtime", beta_call)
    app.router.add_route("OPTIONS", "/v1/{tail:.*}", preflight)
    app.router.add_get("/_sim/state", sim_state)
    app.router.add_get("/_sim/secrets/latest", sim_latest_secret_request)
    app.router.add_get("/_sim/calls", sim_calls)
    app.router.add_get("/_sim/calls/{call_id}", sim_call)
    app.router.add_get("/_sim/calls/{call_id}/events", sim_call_events)
    app.router.add_post("/_sim/calls/{call_id}/script", sim_call_script)
    app.router.add_post("/_sim/calls/{call_id}/client_event", sim_call_client_event)
    app.router.add_post("/_sim/calls/{call_id}/sideband/drop", sim_drop_sidebands)
    app.router.add_get("/_sim/config", sim_get_config)
    app.router.add_post("/_sim/config", sim_set_config)
    app.router.add_get("/_sim/faults", sim_list_faults)
    app.router.add_post("/_sim/faults", sim_add_fault)
    app.router.add_delete("/_sim/faults", sim_clear_faults)
    app.router.add_post("/_sim/clock", sim_clock)
    app.router.add_post("/_sim/reset", sim_reset)
    return app
