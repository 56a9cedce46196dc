import functools
import inspect

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.contrib.auth import get_user
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render
from django_ratelimit.core import get_usage
from django.views.decorators.http import require_GET


def json_error(code, message, status, headers=None, **more):
    """The one error shape of the JSON API (`more`: what the client needs to act on it, beside the message)."""
    return JsonResponse({"error": {"code": code, "message": message, **more}}, status=status, headers=headers)


def _csrf_rejection(request):
    # The middleware's own check, run after authentication so that an
    # anonymous caller learns it must sign in (401) rather than about tokens.
    return CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})


def api_login_required(view=None, *, first=None):
    """JSON 401 for anonymous callers, then the CSRF check; sync or async views.

    `first` (async views only): the view's own first sync work, `first(request, *args, **kwargs)`, run
    in the same trip to a thread as reading the signed-in user, once the user is signed in and the CSRF
    check passed; the view finds its result in `request.first`. A start took two trips, one for the
    user and one for its reads.
    """
    if view is None:
        return functools.partial(api_login_required, first=first)
    if first is not None and not inspect.iscoroutinefunction(view):
        raise TypeError("api_login_required(first=...) is for async views")
    if inspect.iscoroutinefunction(view):

        @functools.wraps(view)
        async def wrapper(request, *args, **kwargs):
            def sign_in():
                # The session, the user and the view's first work in one thread hop (request.auser()
                # takes one for each).
                request.user = get_user(request)
                if not request.user.is_authenticated:
                    return json_error("not_authenticated", "Sign in first.", 401)
                refused = _csrf_rejection(request)
                if refused is None and first is not None:
                    request.first = first(request, *args, **kwargs)
                return refused

            refused = await sync_to_async(sign_in)()
            user = request.user

            async def auser():
                return user

            request.auser = auser
            return refused or await view(request, *args, **kwargs)

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


def _redis_status():
    """"ok", "not used" (one machine), or the error of a ping with a short timeout."""
    if not settings.REDIS_URL:
        return "not used"
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


@require_GET
def healthz(request):
    """200 while the database answers (the one part nothing works without); "degraded" says which
    helper is away: Redis (live pushes, the shared rate limit) or every sideband worker."""
    from sessions_app.models import WorkerBeat

    try:
        connection.ensure_connection()
        database = "ok"
        workers = WorkerBeat.alive(settings.WORKER_BEAT_SECONDS * 3).count()
    except Exception as exc:  # reported, not raised: this is the health probe
        database, workers = f"error: {type(exc).__name__}", None
    redis_status = _redis_status()
    layer = get_channel_layer()
    healthy = database == "ok" and redis_status in ("ok", "not used") and workers
    body = {
        "status": "ok" if healthy else "degraded",
        "database": database,
        "database_vendor": connection.vendor,
        "redis": redis_status,
        "channel_layer": type(layer).__name__ if layer else None,
        "sideband_workers": workers,
        "sideband_worker_mode": settings.SIDEBAND_WORKER,
        "upstream": settings.UPSTREAM_MODE,
    }
    return JsonResponse(body, status=200 if database == "ok" else 503)


def _failed_logins(request, username, increment):
    """The counts of failed sign-ins for this user name and this client address; the larger wait wins."""
    usages = [
        get_usage(request, group="login-user", key=lambda g, r: username, rate=settings.LOGIN_FAILURES_PER_USER,
                  increment=increment),
        get_usage(request, group="login-address", key="ip", rate=settings.LOGIN_FAILURES_PER_ADDRESS,
                  increment=increment),
    ]
    waits = [max(1, u["time_left"]) for u in usages if u and u["count"] >= u["limit"]]
    return max(waits) if waits else None


def login_view(request):
    """Django's sign-in, with failed attempts throttled per user name and per address (a window:
    the right person can sign in again once it passes, and one attacker cannot lock everyone out
    by address alone). Behind a proxy, run daphne with --proxy-headers so the address is the client's."""
    if request.method != "POST":
        return LoginView.as_view()(request)
    username = str(request.POST.get("username", ""))[:150].strip().lower()
    wait = _failed_logins(request, username, increment=False)
    if wait is not None:
        minutes = max(1, -(-wait // 60))
        message = (f"Too many failed sign-ins. Wait {minutes} minute{'s' if minutes > 1 else ''}, then try again; "
                   "if you forgot your password, ask an administrator to reset it.")
        # The name typed stays in the form (unbound: a bound form would check the password it was sent).
        form = AuthenticationForm(request, initial={"username": str(request.POST.get("username", ""))[:150]})
        context = {"form": form, "throttled": message, "next": request.POST.get("next", "/")}
        response = render(request, "registration/login.html", context, status=429)
        response["Retry-After"] = str(wait)
        return response
    response = LoginView.as_view()(request)
    if response.status_code == 200:  # the form came back: the user name and password did not match
        _failed_logins(request, username, increment=True)
    return response
