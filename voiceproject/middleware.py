"""Django's CPU-only middleware, run on the event loop under ASGI.

Under ASGI, MiddlewareMixin sends every process_request/process_response
through sync_to_async: a thread hop each, about a dozen per request. These
hooks only read headers and cookies, so they run inline here; the session and
messages middleware, which may touch the database, keep their hops.
"""

from django.contrib.auth import middleware as auth
from django.middleware import clickjacking, common, csrf, security


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
    pass


class AuthenticationMiddleware(InlineHooksMixin, auth.AuthenticationMiddleware):
    pass


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    pass
