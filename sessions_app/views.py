import asyncio
import datetime
import json
import logging
import time
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.cache import caches
from django.core.paginator import Paginator
from django.db import DatabaseError, transaction
from django.db.models import Max, Q
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_POST
from django_ratelimit.core import _split_rate, get_usage

from documents_app.models import Document
from documents_app.tokens import count_tokens
from teams_app.models import Membership, Team
from voiceproject.prepared import Prepared, PreparedInsert
from voiceproject.views import api_login_required, json_error

from . import context, tools, upstream
from .consumers import announce_ended
from .dashboard import duration_display, viewable_teams
from .exports import transcript_rows
from .forms import BudgetForm, RequestError, parse_mint_request, parse_resume_request
from .models import Budget, Call, EndReason, ModelPrice, RealtimeSession, SpendDay
from .pricing import text_input_cost
from .sideband import hand_over, hang_up, local_worker, tell_page
from .templatetags.display import usd

log = logging.getLogger(__name__)


def _get_session_for_user(user, session_id, manage=False):
    """The user's own session; staff and the team's admins may also read it."""
    sessions = RealtimeSession.objects.select_related("user", "team")
    sessions = sessions.filter(user=user) if manage else sessions.readable_by(user)
    try:
        return sessions.get(pk=session_id)
    except RealtimeSession.DoesNotExist:
        raise Http404 from None


def _mint_rate(request, user):
    """The user's start count this window, in the shared cache (Redis); with that cache away, each
    process counts on its own. Failing open to a local count keeps people talking through a Redis
    outage, and still bounds each user (to the rate times the number of processes); the monthly
    budgets, kept in the database, bound the spend either way."""
    usage = get_usage(request, group="sessions-mint", key=lambda group, req: str(user.pk),
                      rate=settings.MINT_RATE_LIMIT, increment=True)
    if usage is not None:
        return usage
    limit, period = _split_rate(settings.MINT_RATE_LIMIT)
    window = int(time.time()) // period
    local = caches["local"]
    key = f"mint-fallback:{user.pk}:{window}"
    local.add(key, 0, period + 1)
    count = local.incr(key)
    return {"count": count, "limit": limit, "should_limit": count > limit,
            "time_left": period - int(time.time()) % period}


def _json_body(request):
    """The request's JSON body; RequestError with a clear message when it is not."""
    try:
        return json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RequestError("the body must be JSON") from None


def _rate_limited(usage):
    if usage and usage["should_limit"]:
        retry = max(1, usage["time_left"])
        return json_error(
            "rate_limited", f"Too many sessions started. Try again in {retry} s.", 429, {"Retry-After": str(retry)}
        )
    return None


def _mint_preflight(request):
    """A start's work before the upstream, on the thread that read the user: its body parsed, the
    attempt counted against the rate limit (every attempt counts, valid or not), and its reads."""
    user = request.user
    try:
        req, bad_request = parse_mint_request(_json_body(request)), None
    except RequestError as exc:
        req, bad_request = None, exc
    usage = _mint_rate(request, user)
    if req is None or (usage and usage["should_limit"]):
        return req, bad_request, usage, None, None, None, None, None
    found = {}
    if req.document_ids:  # building the visibility query cost a start without documents 0.8 ms for nothing
        found = {d.pk: d for d in Document.objects.visible_to(user).filter(pk__in=req.document_ids)}
    # In the order chosen; None marks an id the user may not see (or that does not exist).
    documents = [found.get(i) for i in req.document_ids]
    membership = Membership.primary_for(user)
    room = Budget.room_for(user, membership.team if membership else None)
    return req, None, usage, ModelPrice.for_model(req.model), membership, documents, room, running_session(user)


def place_documents(library, room, search_only=False):
    """Each chosen document, in the order chosen, read whole while the model's document budget lasts
    ("inline"), else searched ("search"); every one searched when the person asked for search only."""
    placed = []
    for doc in library:
        inline = not search_only and doc.tokens <= room
        room -= doc.tokens if inline else 0
        placed.append({"id": str(doc.pk), "title": doc.title, "tokens": doc.tokens, "sha256": doc.sha256,
                       "mode": "inline" if inline else "search"})
    return placed


def session_reserve(price, document_tokens):
    """What a session is expected to cost at least: its documents once, plus a floor."""
    return text_input_cost(document_tokens, price) + settings.BUDGET_SESSION_RESERVE_USD


SHOWN_PLACES = Decimal("0.0001")  # money shown to 4 places


def _money_left(amount):
    """What a budget has left, as shown to 4 places: rounded down, never below zero. The page weighs a start
    against it, and must not let through one the server refuses (0.04999 left is not the 0.05 needed)."""
    return max(amount, Decimal(0)).quantize(SHOWN_PLACES, ROUND_FLOOR)


def budget_status(user):
    """One statement of the budget that binds this user's next session: whose it is, what is left
    this month, and the reserve any session needs to start (documents add their first read to it)."""
    membership = Membership.primary_for(user)
    budgets = Budget.for_session(user, membership.team if membership else None)
    status = {"limited": bool(budgets), "reserve_usd": f"{settings.BUDGET_SESSION_RESERVE_USD:.4f}"}
    if budgets:
        rows = [(b.remaining(), b) for b in budgets]
        remaining, binding = min(rows, key=lambda row: row[0])
        status.update({
            "whose": "yours" if binding.user_id else "team",
            "team": binding.team.name if binding.team_id else None,
            "limit_usd": f"{binding.monthly_limit_usd:.4f}",
            "spent_usd": f"{binding.monthly_limit_usd - remaining:.4f}",
            "remaining_usd": str(_money_left(remaining)),
        })
    return status


@require_GET
@api_login_required
def budget_detail(request):
    return JsonResponse(budget_status(request.user))


def running_session(user):
    """The user's conversation that a page is connected to right now, if any.

    A conversation whose page went away is not counted: the sideband ends it shortly. Only what the
    refusal names is read (three columns instead of thirty), by a read compiled once (every start
    makes it).
    """
    return _running_session.first(user_id=user.pk)


def _running(user_id):
    return (RealtimeSession.objects.held().only("id", "created_at", "billed_cost_usd")
            .filter(user_id=user_id).order_by("-created_at")[:1])


_running_session = Prepared(_running, user_id=int)


def _already_running(session):
    started = session.created_at.astimezone(datetime.timezone.utc).strftime("%H:%M")
    return JsonResponse({"error": {
        "code": "session_running",
        "message": f"You already have a conversation running (started at {started} UTC, "
                   f"${session.billed_cost_usd:.4f} so far), perhaps in another tab. "
                   "End it to start a new one, or continue it here.",
        "session": {"id": str(session.pk), "url": f"/sessions/{session.pk}/", "created_at": session.created_at.isoformat(),
                    "cost_usd": f"{session.billed_cost_usd:.4f}"},
    }}, status=409)


def _budget_refusal(room, price, document_tokens):
    needed = session_reserve(price, document_tokens)
    if room is not None and needed > room:
        return json_error(
            "budget_exceeded",
            f"The monthly spending limit leaves ${_money_left(room)}, less than the "
            f"${needed.quantize(SHOWN_PLACES, ROUND_CEILING)} this session needs to start.",
            402,
        )
    return None


@sensitive_variables("secret")
async def _create_call(user, config, sdp):
    """Mint an ephemeral secret for this call's config and create the call with it.

    Returns (SDP answer, call id, secret); the secret stays on the server.
    """
    safety = upstream.safety_identifier(user)
    secret, _, _ = await upstream.create_client_secret(context.client_secret_request(config), safety)
    answer, call_id = await upstream.create_call(secret, sdp, safety)
    return answer, call_id, secret


async def _to_the_end(making_a_call):
    """Once a call is asked for upstream, its making runs to the end even if the browser goes away (Django
    then cancels the view): the call created upstream is recorded, or hung up, instead of running unknown
    to the server (the sweep ends a conversation whose page never came). The view waits for it before it
    gives way: the request's thread, where its database work runs, is the view's until then."""
    task = asyncio.ensure_future(making_a_call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await task
        except Exception:  # nobody is left to answer: said here, and the view still ends as cancelled
            log.exception("making a call failed after its browser went away")
        raise


def _unsaved_call():
    return json_error("unavailable", "The call could not be saved, so it was ended. Try again.", 503)


# The start's two inserts, their SQL compiled once per process (the ORM's create compiled both on every start).
_insert_session = PreparedInsert(RealtimeSession)
_insert_call = PreparedInsert(Call)


@sensitive_variables("secret")
def _new_session(user, team, req, config, documents, doc_tokens, call_id, secret, worker=None):
    """The conversation and its first call, in one transaction; the call leased to `worker` (this
    process's own sideband worker) when there is one, so it watches the call without claiming it."""
    lease = {}
    if worker is not None:
        lease = {"sideband_owner": worker.name, "sideband_lease_until": timezone.now() + worker.lease}
    with transaction.atomic():
        session = _insert_session(
            user=user,
            team=team,
            model=req.model,
            voice=req.voice,
            turn_detection=req.turn_detection,
            instructions=config["instructions"],
            session_config=config,
            # Which documents, which version of their text, and whether each is read whole or searched.
            documents=[{k: d[k] for k in ("id", "title", "tokens", "sha256", "mode")} for d in documents],
            document_tokens=doc_tokens,
            pasted_text=req.document_text,
            connected_at=timezone.now(),
        )
        call = _insert_call(session=session, number=1, call_id=call_id, sealed_secret=upstream.seal(secret), **lease)
    return session, call


@login_required
@require_GET
def voice_page(request):
    prices = {p.model: p for p in ModelPrice.objects.filter(model__in=settings.REALTIME_MODELS)}
    models = [
        {
            "id": m,
            "context_window": prices[m].context_window,
            "document_budget": prices[m].document_budget,
            "text_input_per_million": str(prices[m].text_input),
            "text_cached_input_per_million": str(prices[m].text_cached_input),
        }
        for m in settings.REALTIME_MODELS
        if m in prices
    ]
    running = running_session(request.user)
    config = {
        "budget": budget_status(request.user),
        "running_session": None if running is None else str(running.pk),
        "models": models,
        "voices": settings.REALTIME_VOICES,
        "defaults": {
            "model": settings.DEFAULT_MODEL,
            "voice": settings.DEFAULT_VOICE,
            "turn_detection": settings.DEFAULT_TURN_DETECTION,
        },
        "upstream": settings.UPSTREAM_MODE,
        "simulated": settings.UPSTREAM_MODE == "simulator",
        # When the page moves the conversation to its next call, before the upstream's cap ends this one.
        "call_max_seconds": settings.CALL_MAX_SECONDS,
        "rollover_seconds": settings.CALL_ROLLOVER_SECONDS,
        # How long the page waits for the server to put the documents into a new call.
        "context_wait_seconds": settings.CONTEXT_WAIT_SECONDS,
        "disconnect_grace_seconds": settings.DISCONNECT_GRACE_SECONDS,
    }
    return render(request, "sessions/voice.html", {"config": config, "simulated": config["simulated"]})


@require_POST
@api_login_required(first=_mint_preflight)
async def mint_session(request):
    user = await request.auser()
    # The rate limit's cache calls (blocking I/O with Redis) and the reads were made on the thread
    # that read the user, instead of blocking the event loop.
    req, bad_request, usage, price, membership, library, room, running = request.first
    if limited := _rate_limited(usage):
        return limited
    if req is None:
        return json_error(bad_request.code, str(bad_request), 400)
    if price is None:
        return json_error("invalid_request", f"{req.model} has no price set; an admin must add one.", 400)
    if None in library:
        gone = [str(pk) for pk, document in zip(req.document_ids, library) if document is None]
        return json_error("document_not_found", "A chosen document was deleted or is no longer shared with you.", 404,
                          document_ids=gone)
    # One running conversation per person: two tabs would be two billed calls.
    if running is not None:
        return _already_running(running)

    pasted = []
    if req.document_text:
        tokens = await sync_to_async(count_tokens, thread_sensitive=False)(req.document_text)
        pasted = [{"id": "pasted", "title": "Pasted text", "tokens": tokens, "mode": "inline",
                   "sha256": Document.hash_text(req.document_text)}]
    documents = pasted + place_documents(library, price.document_budget - sum(d["tokens"] for d in pasted),
                                         req.search_only)
    inline_tokens = sum(d["tokens"] for d in documents if d["mode"] == "inline")
    if pasted and pasted[0]["tokens"] > price.document_budget:
        return json_error(
            "invalid_request",
            f"The pasted text takes {pasted[0]['tokens']:,} tokens; {req.model} allows {price.document_budget:,} "
            "in the conversation. Paste less, or upload it to the library, where any size can be searched.",
            400,
        )
    if refused := _budget_refusal(room, price, inline_tokens):
        return refused

    team = membership.team if membership else None
    instructions = context.instructions_for(team)
    searched = [d["title"] for d in documents if d["mode"] == "search"]
    if searched:
        instructions += tools.instructions(searched)
    config = context.session_config(req, instructions, price.max_output_tokens, with_search=bool(searched))
    return await _to_the_end(_start(user, team, req, config, documents, inline_tokens))


@sensitive_variables("secret")
async def _start(user, team, req, config, documents, inline_tokens):
    try:
        answer, call_id, secret = await _create_call(user, config, req.sdp)
    except upstream.UpstreamError as exc:
        return json_error(exc.code, exc.message, exc.status)
    # The call exists upstream: it is on the record before the page hears of it, or it is hung up.
    try:
        session, call = await sync_to_async(_new_session)(
            user, team, req, config, documents, inline_tokens, call_id, secret, local_worker()
        )
    except DatabaseError:
        log.exception("a new session could not be saved; hanging its call up")
        await hang_up({call_id: upstream.seal(secret)}, "unsaved session")
        return _unsaved_call()
    await hand_over(call)
    return JsonResponse(
        {
            "id": str(session.pk),
            "sdp": answer,
            "call": call.number,
            "model": session.model,
            "voice": session.voice,
            "turn_detection": session.turn_detection,
            "documents": [{k: d[k] for k in ("id", "title", "tokens", "mode")} for d in session.documents],
            "usage_ws": f"/ws/sessions/{session.pk}/",
        },
        status=201,
    )


def _resume_preflight(request, session_id):
    user = request.user
    session = _get_session_for_user(user, session_id, manage=True)
    usage = _mint_rate(request, user)
    price = ModelPrice.for_model(session.model)
    return usage, session, price, Budget.room_for(user, session.team)


@sensitive_variables("secret")
def _next_call(session, call_id, secret):
    """Record call n+1 of a running conversation; the calls before it are replaced. None if it has ended."""
    with transaction.atomic():
        locked = RealtimeSession.objects.select_for_update().get(pk=session.pk)
        if locked.status != RealtimeSession.ACTIVE:
            return None
        Call.end_all(locked.calls.all(), EndReason.REPLACED)
        number = (locked.calls.aggregate(n=Max("number"))["n"] or 0) + 1
        return _insert_call(session=locked, number=number, call_id=call_id, sealed_secret=upstream.seal(secret))


@require_POST
@api_login_required(first=_resume_preflight)
async def resume_session(request, session_id):
    """The conversation goes on in a new call (after the 60-minute cap, or a lost connection)."""
    user = await request.auser()
    try:
        sdp, bad_request = parse_resume_request(_json_body(request)), None
    except RequestError as exc:
        sdp, bad_request = None, exc
    usage, session, price, room = request.first
    if limited := _rate_limited(usage):
        return limited
    if sdp is None:
        return json_error(bad_request.code, str(bad_request), 400)
    if session.status != RealtimeSession.ACTIVE:
        return json_error("session_ended", "This conversation has ended; start a new one.", 409)
    if price is None:
        return json_error("invalid_request", f"{session.model} has no price set; an admin must add one.", 400)
    if refused := _budget_refusal(room, price, session.document_tokens):
        return refused
    return await _to_the_end(_resume(user, session, sdp))


@sensitive_variables("secret")
async def _resume(user, session, sdp):
    try:
        answer, call_id, secret = await _create_call(user, session.session_config, sdp)
    except upstream.UpstreamError as exc:
        return json_error(exc.code, exc.message, exc.status)
    try:
        call = await sync_to_async(_next_call)(session, call_id, secret)
    except DatabaseError:
        log.exception("a resumed call could not be saved; hanging it up")
        await hang_up({call_id: upstream.seal(secret)}, "unsaved call")
        return _unsaved_call()
    if call is None:
        await hang_up({call_id: upstream.seal(secret)}, "conversation ended meanwhile")
        return json_error("session_ended", "This conversation has ended; start a new one.", 409)
    await hand_over(call)
    # A tab still holding the call before (another tab continued it here) lets go of the conversation.
    await tell_page(session.pk, {"type": "call.ended", "call": call.number - 1, "reason": EndReason.REPLACED})
    return JsonResponse({"sdp": answer, "call": call.number}, status=201)


@require_POST
@api_login_required
async def end_session(request, session_id):
    user = await request.auser()
    session = await sync_to_async(_get_session_for_user)(user, session_id, manage=True)
    calls = await sync_to_async(session.end)(EndReason.USER)
    # The page closes its peer connection; hanging up too makes sure a client
    # that ignores the stop cannot keep spending on the call.
    await hang_up(calls or {}, "user stop")
    if calls is not None:
        await announce_ended(get_channel_layer(), [session.pk])
        # Another tab of the same conversation stops too, and says why.
        await tell_page(session.pk, {"type": "call.ended", "call": None, "reason": EndReason.USER})
    return JsonResponse(await sync_to_async(session_payload)(session))


@require_GET
@api_login_required
def session_detail(request, session_id):
    session = _get_session_for_user(request.user, session_id)
    payload = session_payload(session)
    sources = tools.sources_by_item(session)
    payload["transcript"] = [
        {"item_id": t.item_id, "role": t.role, "text": t.text, "call": t.call_number,
         "sources": sources.get(t.item_id, []), "at": t.created_at.isoformat()}
        for t in session.transcript.exclude(text="")
    ]
    payload["tool_calls"] = [
        {"name": c.name, "query": c.query, "call": c.call.number if c.call else None,
         "answer_item_id": c.answer_item_id or None, "at": c.created_at.isoformat()}
        for c in session.tool_calls.select_related("call")
    ]
    payload["usage"] = [
        {
            "response_id": u.response_id,
            "kind": u.kind,
            "source": u.source,
            "model": u.model,
            "input_tokens": u.input_tokens,
            "cached_tokens": u.cached_tokens,
            "output_tokens": u.output_tokens,
            "cost_usd": f"{u.cost_usd:.8f}",
        }
        for u in session.usage_records.all()
    ]
    payload["events"] = [
        {"kind": e.kind, "call": e.call.number if e.call else None, "detail": e.detail, "at": e.created_at.isoformat()}
        for e in session.events.select_related("call")
    ]
    return JsonResponse(payload)


def session_payload(session):
    return {
        "id": str(session.pk),
        "user": session.user.get_username(),
        "team": session.team.name if session.team else None,
        "model": session.model,
        "voice": session.voice,
        "turn_detection": session.turn_detection,
        "status": session.status,
        "created_at": session.created_at.isoformat(),
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "end_reason": session.end_reason or None,
        "documents": session.documents,
        "document_tokens": session.document_tokens,
        "calls": [
            {
                "number": c.number,
                "call_id": c.call_id,
                "status": c.status,
                "created_at": c.created_at.isoformat(),
                "ended_at": c.ended_at.isoformat() if c.ended_at else None,
                "end_reason": c.end_reason or None,
                "verified_by_server": bool(c.sideband_attached_at),
            }
            for c in session.calls.all()
        ],
        "totals": session.totals(),
    }


def _budget_targets(viewer):
    """The teams and users whose budgets the viewer may set: staff all, people in no team included (they
    can start conversations too); team admins their teams, and the people who are in no other team (a
    person's own limit counts their spend in every team, which an admin of one team neither sees nor
    decides), themselves aside."""
    teams = viewable_teams(viewer)
    others = Team.objects.exclude(pk__in=teams.values("pk"))
    reach = Q(memberships__team__in=teams)
    if viewer.is_staff:
        reach |= Q(memberships__isnull=True)
    users = (get_user_model().objects.filter(reach)
             .exclude(memberships__team__in=others).distinct().order_by("username"))
    if not viewer.is_staff:
        users = users.exclude(pk=viewer.pk)  # a limit staff set on a team admin is not theirs to lift
    return teams.order_by("name"), users


def _budget_rows(teams, users):
    """Every team and person the viewer manages, with their limit (if any) and this month's spend."""
    budgets_by = {(b.team_id, b.user_id): b for b in Budget.objects.filter(Q(team__in=teams) | Q(user__in=users))}
    spent = {"team": SpendDay.objects.filter(team__in=teams).spent_this_month("team"),
             "user": SpendDay.objects.filter(user__in=users).spent_this_month("user")}
    rows = [("team", str(t.pk), t.name, t.pk, budgets_by.get((t.pk, None))) for t in teams]
    rows += [("user", u.username, u.username, u.pk, budgets_by.get((None, u.pk))) for u in users]
    shown = []
    for scope, target, name, pk, budget in rows:
        spent_now = spent[scope].get(pk) or Decimal(0)
        limit = budget.monthly_limit_usd if budget else None
        shown.append({"scope": scope, "target": target, "name": name, "limit": limit, "spent": spent_now,
                      "spent_exact": f"{spent_now:.8f}",  # 8 places, as every data-cost attribute (SQLite sums give 12)
                      "remaining": None if limit is None else limit - spent_now})
    return shown


def _save_budget(request, form, owner, name):
    scope, limit = form.cleaned_data["scope"], form.cleaned_data["monthly_limit_usd"]
    if limit is None:
        removed, _ = Budget.objects.filter(**{scope: owner}).delete()
        message = f"Removed the monthly limit of {name}." if removed else f"{name} has no monthly limit."
    else:
        Budget.objects.update_or_create(**{scope: owner}, defaults={"monthly_limit_usd": limit})
        message = f"Saved: {name} may spend {usd(limit)} a month."
    messages.success(request, message)


@login_required
def budgets(request):
    teams, users = _budget_targets(request.user)
    form = BudgetForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            scope, target = form.cleaned_data["scope"], form.cleaned_data["target"]
            if scope == "team":
                owner = next((t for t in teams if str(t.pk) == target), None)
            else:
                owner = users.filter(username=target).first()
            if owner is None:
                form.add_error("target", "No such team or user among those you manage.")
            else:
                _save_budget(request, form, owner, owner.name if scope == "team" else owner.username)
                return redirect("sessions-budgets")
        status = 400
    elif request.method == "GET":
        status = 200
    else:
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    rows = _budget_rows(teams, users)
    if form.is_bound:
        # The row that was being edited shows what was typed, and why it was refused, beside it.
        for row in rows:
            if (row["scope"], row["target"]) == (form.data.get("scope"), form.data.get("target")):
                row["typed"] = form.data.get("monthly_limit_usd", "")
                row["errors"] = [m for messages_ in form.errors.values() for m in messages_]
    unmatched = form.errors and not any(row.get("errors") for row in rows)
    context = {"rows": rows, "form": form, "unmatched_errors": unmatched}
    return render(request, "dashboard/budgets.html", context, status=status)


# ---- history: a member's own conversations, and one conversation's page ----

HISTORY_PAGE_SIZE = 50


@login_required
@require_GET
def history(request):
    sessions = RealtimeSession.objects.without_texts().filter(user=request.user).order_by("-created_at", "-pk")
    page = Paginator(sessions, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {
            "session": s,
            "duration": duration_display(s.duration_seconds),
            "cost": f"{s.billed_cost_usd:.4f}",
            "cost_usd": f"{s.billed_cost_usd:.8f}",
        }
        for s in page
    ]
    return render(request, "sessions/history.html", {"page": page, "rows": rows})


@login_required
@require_GET
def history_detail(request, session_id):
    session = _get_session_for_user(request.user, session_id)
    if session.user_id != request.user.pk:
        request.nav_section = "/dashboard/"  # someone else's conversation is reached from Spend, not My sessions
    context = {
        "session": session,
        "duration": duration_display(session.duration_seconds),
        "cost": f"{session.billed_cost_usd:.4f}",
        "cost_usd": f"{session.billed_cost_usd:.8f}",
        "transcript": transcript_rows(session),
        "calls": session.calls.all(),
    }
    return render(request, "sessions/history.html", context)
