import functools
import inspect

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.http import require_GET


def json_error(code, message, status, headers=None):
    """The one error shape of the JSON API."""
    return JsonResponse({"error": {"code": code, "message": message}}, status=status, headers=headers)


def _csrf_rejection(request):
    # The middleware's own check, run after authentication so that an
    # anonymous caller learns it must sign in (401) rather than about tokens.
    return CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})


def api_login_required(view):
    """JSON 401 for anonymous callers, then the CSRF check; sync or async views."""
    if inspect.iscoroutinefunction(view):

        @functools.wraps(view)
        async def wrapper(request, *args, **kwargs):
            user = await request.auser()
            if not user.is_authenticated:
                return json_error("not_authenticated", "Sign in first.", 401)
            # Pure CPU on an already-read request: no thread hop needed.
            return _csrf_rejection(request) or await view(request, *args, **kwargs)

    else:

        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return json_error("not_authenticated", "Sign in first.", 401)
            return _csrf_rejection(request) or view(request, *args, **kwargs)

    wrapper.csrf_exempt = True
    return wrapper


def csrf_failure(request, reason=""):
    if request.path.startswith("/api/"):
        return json_error("csrf_failed", "The CSRF token is missing or wrong. Reload the page.", 403)
    from django.views.csrf import csrf_failure as default_failure

    return default_failure(request, reason)


@require_GET
def healthz(request):
    try:
        connection.ensure_connection()
        database = "ok"
    except Exception as exc:  # reported, not raised: this is the health probe
        database = f"error: {type(exc).__name__}"
    layer = get_channel_layer()
    body = {
        "status": "ok" if database == "ok" else "degraded",
        "database": database,
        "database_vendor": connection.vendor,
        "channel_layer": type(layer).__name__ if layer else None,
        "upstream": settings.UPSTREAM_MODE,
    }
    return JsonResponse(body, status=200 if database == "ok" else 503)
