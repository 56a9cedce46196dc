"""The project's middleware: Django's CPU-only middleware run inline under ASGI, JSON errors under
/api/, and the Content Security Policy.

Under ASGI, MiddlewareMixin sends every process_request/process_response
through sync_to_async: a thread hop each, about a dozen per request. Those
hooks only read headers and cookies, so INLINE maps Django's classes (named in
settings.MIDDLEWARE, where Django's deploy checks look for them) to variants
that run them on the event loop, and CSRF's view hook too, but for a form's
body. The session and messages middleware may touch the database, but only when
a session or a message was changed: they run on the loop too, and take the hop
only then.
"""

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse, RawPostDataException
from django.http.multipartparser import MultiPartParserError
from django.middleware import clickjacking, common, csrf, security
from django.utils.deprecation import MiddlewareMixin

log = logging.getLogger(__name__)


class InlineHooksMixin:
    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    pass


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineHooksMixin, csrf.CsrfViewMiddleware):
    """Its view hook, sync, took every request to a thread and back (Django adapts it with
    sync_to_async), though it only reads headers and cookies, and a form's fields: a form's body
    (an upload's parts, written to disk) is still parsed on a thread, everything else on the loop."""

    FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")

    async def process_view(self, request, callback, callback_args, callback_kwargs):
        hook = super().process_view
        if (request.method in ("GET", "HEAD", "OPTIONS", "TRACE") or getattr(callback, "csrf_exempt", False)
                or (request.content_type not in self.FORMS and not settings.CSRF_USE_SESSIONS)):
            return hook(request, callback, callback_args, callback_kwargs)
        return await sync_to_async(hook)(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(InlineHooksMixin, auth.AuthenticationMiddleware):
    pass


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    pass


class SavesOnlyWhenNeeded:
    """Attaching the store is CPU only, done on the loop; the response goes to a thread (the database
    or the cache) only when `must_save` says something was changed."""

    async def __acall__(self, request):
        self.process_request(request)
        response = await self.get_response(request)
        if self.must_save(request):
            return await sync_to_async(self.process_response)(request, response)
        return self.process_response(request, response)


class SessionMiddleware(SavesOnlyWhenNeeded, sessions.SessionMiddleware):
    """The store loads lazily; it is saved when modified (or on every request if so configured)."""

    def must_save(self, request):
        return request.session.modified or settings.SESSION_SAVE_EVERY_REQUEST


class MessageMiddleware(SavesOnlyWhenNeeded, messages.MessageMiddleware):
    """Messages are stored (in the session) only when one was added or read."""

    def must_save(self, request):
        return request._messages.used or request._messages.added_new


INLINE = {
    "django.contrib.sessions.middleware.SessionMiddleware": "voiceproject.middleware.SessionMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware": "voiceproject.middleware.MessageMiddleware",
    "django.middleware.security.SecurityMiddleware": "voiceproject.middleware.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware": "voiceproject.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware": "voiceproject.middleware.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware": "voiceproject.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": "voiceproject.middleware.XFrameOptionsMiddleware",
}


class ApiErrorsMiddleware:
    """Every answer under /api/ is JSON: errors Django or a decorator made as HTML (404, 405,
    413, 500 and the rest) become the contract's {"error": {"code", "message"}}."""

    CODES = {400: "invalid_request", 401: "not_authenticated", 403: "forbidden", 404: "not_found",
             405: "method_not_allowed", 408: "request_timeout", 413: "request_too_large", 429: "rate_limited",
             500: "server_error", 502: "upstream_error", 503: "unavailable", 504: "upstream_timeout"}
    MESSAGES = {404: "There is nothing here.", 405: "This method is not allowed here.",
                413: "The request is too large.", 500: "Something went wrong on the server. Try again."}
    # Both, so that under ASGI Django calls __acall__ on the loop: a sync-only outermost middleware
    # put every request on a thread and back (sync_to_async, then async_to_sync for the rest).
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self.__acall__(request)
        return self._jsonify(request, self._guarded(request, self.get_response))

    async def __acall__(self, request):
        if not request.path.startswith("/api/"):
            return await self.get_response(request)
        try:
            response = await self.get_response(request)
        except Exception as exc:  # the last line before a 500: logged, answered in JSON
            response = self._failure(request, exc)
        return self._jsonify(request, response)

    def _guarded(self, request, get_response):
        if not request.path.startswith("/api/"):
            return get_response(request)
        try:
            return get_response(request)
        except Exception as exc:  # the last line before a 500: logged, answered in JSON
            return self._failure(request, exc)

    def process_exception(self, request, exception):
        if request.path.startswith("/api/"):
            return self._failure(request, exception)
        return None

    def _failure(self, request, exc):
        if isinstance(exc, RequestDataTooBig):
            return _api_error(413, "request_too_large", "The request is too large.")
        if isinstance(exc, Http404):
            return _api_error(404, "not_found", self.MESSAGES[404])
        if isinstance(exc, PermissionDenied):
            return _api_error(403, "forbidden", "You may not do this.")
        if isinstance(exc, (SuspiciousOperation, BadRequest)):
            return _api_error(400, "invalid_request", "The request could not be understood.")
        if isinstance(exc, (MultiPartParserError, RawPostDataException)):
            # A form body (well formed or not) where the API reads JSON: the CSRF check read it as a form.
            return _api_error(400, "invalid_request", "The body must be JSON (Content-Type: application/json).")
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _api_error(500, "server_error", self.MESSAGES[500])

    def _jsonify(self, request, response):
        if not request.path.startswith("/api/") or response.status_code < 400:
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        status = response.status_code
        json_response = _api_error(status, self.CODES.get(status, "error"),
                                   self.MESSAGES.get(status, f"The request failed (HTTP {status})."))
        for header in ("Allow", "Retry-After"):
            if header in response:
                json_response[header] = response[header]
        return json_response


def _api_error(status, code, message):
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


class ContentSecurityPolicyMiddleware(InlineHooksMixin, MiddlewareMixin):
    """A Content Security Policy on every page: only this origin's own scripts, styles and sockets."""

    def process_response(self, request, response):
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        response.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        return response
