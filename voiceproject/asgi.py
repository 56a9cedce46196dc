import asyncio
import gc
import os
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceproject.settings")
django.setup(set_prefix=False)


def drop_request_started_receivers():
    """Django's receivers of request_started are sync, so under ASGI every request went to its thread
    and back for them alone. What they did is done at request_finished, on the same thread and
    connection: a connection that broke or outlived CONN_MAX_AGE is closed there, and one kept is
    health-checked at its next use (CONN_HEALTH_CHECKS); the query log they reset is DEBUG's, and
    bounded. (Django's test client connects them again after each of its requests.)"""
    from django.core import signals
    from django.db import close_old_connections, reset_queries

    signals.request_started.disconnect(close_old_connections)
    signals.request_started.disconnect(reset_queries)


class InlineMiddlewareHandler(ASGIHandler):
    """Django's ASGI handler with the CPU-only middleware swapped for their inline variants, and
    request threads kept from one request to the next.

    Django gives each request a thread of its own for its sync work (sessions, the ORM) and ends it
    with the request, so each request also opened a database connection. Here a request borrows an
    idle thread (one at a time, as Django's own would be), and gives it back with its connection
    still open; Django's request_finished still runs on it, so CONN_MAX_AGE and CONN_HEALTH_CHECKS
    apply to that connection as under WSGI.
    """

    def __init__(self):
        super().__init__()
        self.idle_threads = []
        drop_request_started_receivers()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        from django.conf import settings

        thread = self.idle_threads.pop() if self.idle_threads else ThreadPoolExecutor(1, "request")
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            if len(self.idle_threads) < settings.REQUEST_THREADS:
                self.idle_threads.append(thread)
            else:  # a burst past the kept threads: this one closes its connection and ends
                from django.db import connections

                thread.submit(connections.close_all)
                thread.shutdown(wait=False)

    def load_middleware(self, is_async=False):
        from django.conf import settings

        from voiceproject.middleware import INLINE

        named = settings.MIDDLEWARE
        settings.MIDDLEWARE = [INLINE.get(path, path) for path in named]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = named


django_asgi_app = InlineMiddlewareHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the apps loaded)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.core.exceptions import SuspiciousFileOperation  # noqa: E402
from django.http import Http404  # noqa: E402
from django.middleware.security import SecurityMiddleware  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from sessions_app.routing import websocket_urlpatterns  # noqa: E402
from sessions_app.sideband import InProcessWorker  # noqa: E402
from voiceproject.middleware import ContentSecurityPolicyMiddleware  # noqa: E402


class StaticFiles(ASGIStaticFilesHandler):
    """/static/ with the pages' security headers, and a path that climbs out of it a 404, not a 500."""

    def serve(self, request):
        try:
            response = super().serve(request)
        except SuspiciousFileOperation:
            raise Http404("No such file.") from None
        # The headers the middleware gives every page; static files skip the middleware.
        SecurityMiddleware(lambda r: response).process_response(request, response)
        return ContentSecurityPolicyMiddleware(lambda r: response).process_response(request, response)


class BoundedBodyWait:
    """A request whose body stops arriving (a Content-Length larger than what is sent) is answered 408
    after BODY_WAIT_SECONDS of silence, instead of holding a worker for as long as the client likes."""

    def __init__(self, app, seconds):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"body_done": False, "timed_out": False, "started": False}

        async def bounded_receive():
            if state["body_done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.seconds)
            except asyncio.TimeoutError:
                state["timed_out"] = True
                return {"type": "http.disconnect"}  # Django stops reading and drops the request
            if message["type"] != "http.request" or not message.get("more_body"):
                state["body_done"] = True
            return message

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, bounded_receive, tracked_send)
        if state["timed_out"] and not state["started"]:
            body = b'{"error": {"code": "request_timeout", "message": "The request body stopped arriving."}}'
            await send({"type": "http.response.start", "status": 408,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})


http_app = StaticFiles(django_asgi_app) if settings.SERVE_STATIC else django_asgi_app

application = ProtocolTypeRouter(
    {
        "http": BoundedBodyWait(http_app, settings.BODY_WAIT_SECONDS),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

if settings.SIDEBAND_WORKER == "inprocess":
    application = InProcessWorker(application)

# What is loaded by now (Django, the apps, the views behind the URL patterns) lives as long as the
# process: take it out of the collector's sight. Each full collection walked all of it, 20-40 ms
# during which every request and socket of the process waited; those pauses were the slowest
# library searches.
get_resolver().url_patterns  # the views, imported now rather than on the first request
gc.freeze()
