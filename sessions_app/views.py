import datetime
import json
import logging
import re

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_ratelimit.core import get_usage

from documents_app.models import Document
from documents_app.tokens import count_tokens
from teams_app.models import Membership, Team
from voiceproject.views import api_login_required, json_error

from . import context, upstream
from .dashboard import teams_whose_spend_user_sees
from .forms import BudgetForm, RequestError, parse_mint_request
from .models import Budget, ModelPrice, RealtimeSession
from .pricing import text_input_cost

log = logging.getLogger(__name__)
CALL_ID = re.compile(r"^rtc_[A-Za-z0-9_-]{1,120}$")


def _get_session_for_user(user, session_id, manage=False):
    """The user's own session; staff and the team's admins may also read it."""
    sessions = RealtimeSession.objects.select_related("user", "team")
    if manage:
        sessions = sessions.filter(user=user)
    elif not user.is_staff:
        admin_teams = Membership.objects.filter(user=user, role=Membership.ADMIN).values("team")
        sessions = sessions.filter(Q(user=user) | Q(team__in=admin_teams))
    try:
        return sessions.get(pk=session_id)
    except RealtimeSession.DoesNotExist:
        raise Http404 from None


def _mint_rate(request, user):
    return get_usage(
        request,
        group="sessions-mint",
        key=lambda group, req: str(user.pk),
        rate=settings.MINT_RATE_LIMIT,
        increment=True,
    )


def _mint_preflight(request, user, req):
    usage = _mint_rate(request, user)
    if req is None or (usage and usage["should_limit"]):
        return usage, None, None, None, None
    found = {d.pk: d for d in Document.objects.visible_to(user).filter(pk__in=req.document_ids)}
    # In the order chosen; None marks an id the user may not see (or that does not exist).
    documents = [found.get(i) for i in req.document_ids]
    membership = Membership.primary_for(user)
    room = Budget.room_for(user, membership.team if membership else None)
    return usage, ModelPrice.objects.filter(model=req.model).first(), membership, documents, room


def session_reserve(price, document_tokens):
    """What a session is expected to cost at least: its documents once, plus a floor."""
    return text_input_cost(document_tokens, price) + settings.BUDGET_SESSION_RESERVE_USD


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
    membership = Membership.primary_for(request.user)
    room = Budget.room_for(request.user, membership.team if membership else None)
    config = {
        "budget_remaining_usd": None if room is None else f"{max(room, 0):.4f}",
        "models": models,
        "voices": settings.REALTIME_VOICES,
        "defaults": {
            "model": settings.DEFAULT_MODEL,
            "voice": settings.DEFAULT_VOICE,
            "turn_detection": settings.DEFAULT_TURN_DETECTION,
        },
        "upstream": settings.UPSTREAM_MODE,
    }
    return render(request, "sessions/voice.html", {"config": config})


@require_POST
@api_login_required
async def mint_session(request):
    user = await request.auser()
    try:
        req = parse_mint_request(json.loads(request.body or b"{}"))
    except (ValueError, UnicodeDecodeError) as exc:
        req, bad_request = None, str(exc) if isinstance(exc, RequestError) else "the body must be JSON"
    # Every attempt counts against the rate limit, valid or not. The limit's
    # cache calls (blocking I/O with Redis) and the reads share one trip to
    # this request's worker thread instead of blocking the event loop.
    usage, price, membership, library, room = await sync_to_async(_mint_preflight)(request, user, req)
    if usage and usage["should_limit"]:
        retry = max(1, usage["time_left"])
        return json_error(
            "rate_limited", f"Too many sessions started. Try again in {retry} s.", 429, {"Retry-After": str(retry)}
        )
    if req is None:
        return json_error("invalid_request", bad_request, 400)
    if price is None:
        return json_error("invalid_request", f"{req.model} has no price set; an admin must add one.", 400)
    if None in library:
        return json_error("document_not_found", "One of the chosen documents does not exist or is not yours to use.", 404)

    documents = [
        {"id": str(d.pk), "title": d.title, "text": d.text, "tokens": d.tokens, "sha256": d.sha256} for d in library
    ]
    if req.document_text:
        tokens = await sync_to_async(count_tokens, thread_sensitive=False)(req.document_text)
        documents.append({"id": "pasted", "title": "Pasted text", "text": req.document_text, "tokens": tokens,
                          "sha256": Document.hash_text(req.document_text)})
    doc_tokens = sum(d["tokens"] for d in documents)
    if doc_tokens > price.document_budget:
        return json_error(
            "invalid_request",
            f"The documents take {doc_tokens:,} tokens; {req.model} allows {price.document_budget:,}. "
            "Choose fewer or shorter documents.",
            400,
        )

    if room is not None and session_reserve(price, doc_tokens) > room:
        return json_error(
            "budget_exceeded",
            f"The monthly spending limit leaves ${max(room, 0):.4f}, less than this session needs to start.",
            402,
        )

    team = membership.team if membership else None
    instructions = context.instructions_for(team)
    body = context.client_secret_request(req, instructions, price.max_output_tokens)
    try:
        secret, expires_at, upstream_session = await upstream.create_client_secret(
            body, upstream.safety_identifier(user)
        )
    except upstream.UpstreamError as exc:
        return json_error(exc.code, exc.message, exc.status)

    session = await RealtimeSession.objects.acreate(
        user=user,
        team=team,
        model=req.model,
        voice=req.voice,
        turn_detection=req.turn_detection,
        upstream_session_id=str(upstream_session.get("id", ""))[:100],
        secret_expires_at=datetime.datetime.fromtimestamp(expires_at, tz=datetime.timezone.utc),
        instructions=instructions,
        # Which documents, and which version of their text, went into the context.
        documents=[{k: d[k] for k in ("id", "title", "tokens", "sha256")} for d in documents],
        document_tokens=doc_tokens,
    )
    return JsonResponse(
        {
            "id": str(session.pk),
            "client_secret": secret,
            "expires_at": expires_at,
            "calls_url": upstream.calls_url(),
            "model": session.model,
            "voice": session.voice,
            "turn_detection": session.turn_detection,
            "context_items": context.document_items(documents),
            "documents": session.documents,
            "usage_ws": f"/ws/sessions/{session.pk}/",
        },
        status=201,
    )


@require_POST
@api_login_required
def attach_call(request, session_id):
    session = _get_session_for_user(request.user, session_id, manage=True)
    try:
        call_id = json.loads(request.body).get("call_id")
    except (ValueError, AttributeError):
        return json_error("invalid_request", 'the body must be {"call_id": "rtc_..."}', 400)
    if not isinstance(call_id, str) or not CALL_ID.match(call_id):
        return json_error("invalid_request", "call_id must look like rtc_...", 400)
    if session.status == RealtimeSession.ENDED:
        return json_error("session_ended", "This session has ended.", 409)
    if session.call_id and session.call_id != call_id:
        return json_error("invalid_request", "This session already has a call.", 409)
    session.call_id = call_id
    session.status = RealtimeSession.ACTIVE
    session.connected_at = session.connected_at or timezone.now()
    session.save(update_fields=["call_id", "status", "connected_at"])
    return HttpResponse(status=204)


@require_POST
@api_login_required
async def end_session(request, session_id):
    user = await request.auser()
    session = await sync_to_async(_get_session_for_user)(user, session_id, manage=True)
    ended_now = await sync_to_async(session.end)("user")
    if ended_now and session.call_id:
        # The page closes its peer connection; hanging up too makes sure a
        # client that ignores the stop cannot keep spending on this call.
        try:
            await upstream.hangup(session.call_id)
        except upstream.UpstreamError:
            log.info("hangup of an ended call was refused; the call had most likely closed already")
    return JsonResponse(await sync_to_async(session_payload)(session))


@require_GET
@api_login_required
def session_detail(request, session_id):
    session = _get_session_for_user(request.user, session_id)
    payload = session_payload(session)
    payload["transcript"] = [
        {"item_id": t.item_id, "role": t.role, "text": t.text, "at": t.created_at.isoformat()}
        for t in session.transcript.all()
    ]
    payload["usage"] = [
        {
            "response_id": u.response_id,
            "source": u.source,
            "input_tokens": u.input_tokens,
            "cached_tokens": u.cached_tokens,
            "output_tokens": u.output_tokens,
            "cost_usd": f"{u.cost_usd:.6f}",
        }
        for u in session.usage_records.all()
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
        "call_id": session.call_id or None,
        "created_at": session.created_at.isoformat(),
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "end_reason": session.end_reason or None,
        "documents": session.documents,
        "document_tokens": session.document_tokens,
        "totals": session.totals(),
    }


def _budget_targets(viewer):
    """The teams and users whose budgets the viewer may set: staff all, team admins their teams."""
    teams = teams_whose_spend_user_sees(viewer)
    teams = Team.objects.all() if teams is None else teams
    users = get_user_model().objects.filter(memberships__team__in=teams).distinct().order_by("username")
    return teams.order_by("name"), users


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
                limit = form.cleaned_data["monthly_limit_usd"]
                if limit is None:
                    Budget.objects.filter(**{scope: owner}).delete()
                else:
                    Budget.objects.update_or_create(**{scope: owner}, defaults={"monthly_limit_usd": limit})
                return redirect("sessions-budgets")
        status = 400
    elif request.method == "GET":
        status = 200
    else:
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    budgets_by = {(b.team_id, b.user_id): b for b in Budget.objects.filter(Q(team__in=teams) | Q(user__in=users))}
    rows = [("team", str(t.pk), t.name, budgets_by.get((t.pk, None))) for t in teams]
    rows += [("user", u.username, u.username, budgets_by.get((None, u.pk))) for u in users]
    rows = [
        {"scope": scope, "target": target, "name": name, "budget": budget,
         "spent": budget.spent() if budget else None, "remaining": budget.remaining() if budget else None}
        for scope, target, name, budget in rows
    ]
    return render(request, "dashboard/budgets.html", {"rows": rows, "form": form}, status=status)
