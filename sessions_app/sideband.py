"""The sideband worker: the server's own view of every running call.

For each active session with a call id, one worker opens the upstream's
sideband WebSocket (`?call_id=`), records the usage of every `response.done`
it sees as verified, stores the transcript, and ends sessions whose call
closed or whose page went away (no close event reaches the upstream when a
tab dies). Workers find calls in the database and claim them with a lease,
so any number of them, in any process, share the work and take over a dead
worker's calls; web processes never hold a sideband themselves.
"""

import asyncio
import datetime
import json
import logging
import os
import socket

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from . import upstream
from .consumers import announce_spend, stop_for_budget
from .models import ModelPrice, RealtimeSession, TranscriptEntry, UsageRecord
from .pricing import UsageError, cost_of, parse_usage

log = logging.getLogger(__name__)


def _now():
    return timezone.now()


class SidebandWorker:
    def __init__(self, name=None, poll_seconds=1.0, lease_seconds=15, page_grace_seconds=None):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.poll_seconds = poll_seconds
        self.lease = datetime.timedelta(seconds=lease_seconds)
        grace = settings.PAGE_GONE_SECONDS if page_grace_seconds is None else page_grace_seconds
        self.page_grace = datetime.timedelta(seconds=grace)
        self.watching = {}  # session id -> task

    async def run(self, stop):
        """Claim, watch and police calls until `stop` is set."""
        try:
            while not stop.is_set():
                for session_id, call_id in await self.claim():
                    self.watching[session_id] = asyncio.create_task(self.watch(session_id, call_id))
                await self.renew()
                for session_id, call_id in await self.pages_gone():
                    await self.hang_up(session_id, call_id, "page_gone")
                await self.sweep_unconnected()
                try:
                    await asyncio.wait_for(stop.wait(), self.poll_seconds)
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in self.watching.values():
                task.cancel()
            await asyncio.gather(*self.watching.values(), return_exceptions=True)
            await self.release()

    @database_sync_to_async
    def claim(self):
        now = _now()
        free = Q(sideband_lease_until__isnull=True) | Q(sideband_lease_until__lt=now)
        candidates = (
            RealtimeSession.objects.filter(status=RealtimeSession.ACTIVE).exclude(call_id="").filter(free)
            .exclude(pk__in=list(self.watching)).values_list("pk", "call_id")[:50]
        )
        claimed = []
        for pk, call_id in candidates:
            # The conditional update is the lock: only one worker's succeeds.
            won = RealtimeSession.objects.filter(pk=pk).filter(free).update(
                sideband_owner=self.name, sideband_lease_until=now + self.lease
            )
            if won:
                claimed.append((pk, call_id))
        return claimed

    @database_sync_to_async
    def renew(self):
        if self.watching:
            RealtimeSession.objects.filter(pk__in=list(self.watching), sideband_owner=self.name).update(
                sideband_lease_until=_now() + self.lease
            )

    @database_sync_to_async
    def release(self):
        RealtimeSession.objects.filter(sideband_owner=self.name).update(sideband_lease_until=None)

    @database_sync_to_async
    def pages_gone(self):
        """Watched calls whose page left (or never came) longer ago than the grace period."""
        cutoff = _now() - self.page_grace
        left = Q(page_left_at__lt=cutoff) & (Q(page_connected_at__isnull=True) | Q(page_left_at__gt=F("page_connected_at")))
        never = Q(page_connected_at__isnull=True, connected_at__lt=cutoff)
        return list(
            RealtimeSession.objects.filter(pk__in=list(self.watching), status=RealtimeSession.ACTIVE)
            .filter(left | never).values_list("pk", "call_id")
        )

    @database_sync_to_async
    def sweep_unconnected(self):
        """End sessions that never got a call and whose secret can no longer start one."""
        now = _now()
        RealtimeSession.objects.filter(
            status=RealtimeSession.CREATED, call_id="", secret_expires_at__lt=now - self.page_grace
        ).update(status=RealtimeSession.ENDED, ended_at=now, end_reason="never_connected")

    async def hang_up(self, session_id, call_id, reason):
        if await database_sync_to_async(_end)(session_id, reason):
            try:
                await upstream.hangup(call_id)
            except upstream.UpstreamError:
                log.warning("hangup of session %s (%s) was refused", session_id, reason)

    async def watch(self, session_id, call_id):
        try:
            async with upstream.sideband(call_id) as ws:
                async for message in ws:
                    if message.type.name != "TEXT":
                        break
                    try:
                        event = json.loads(message.data)
                    except ValueError:
                        log.warning("sideband of session %s sent a frame that is not JSON", session_id)
                        continue
                    await self.handle(session_id, event)
        except upstream.UpstreamError:
            log.warning("no sideband for session %s", session_id)
        finally:
            self.watching.pop(session_id, None)
            # The call is over upstream, whichever way it ended.
            await database_sync_to_async(_end)(session_id, "call_closed")

    async def handle(self, session_id, event):
        kind = event.get("type")
        if kind == "response.done":
            response = event.get("response") or {}
            if isinstance(response.get("usage"), dict) and isinstance(response.get("id"), str):
                await self.record(session_id, response["id"], response["usage"])
        elif kind == "conversation.item.input_audio_transcription.completed":
            await database_sync_to_async(_transcript)(session_id, event.get("item_id"), "user", event.get("transcript"))
        elif kind == "response.output_audio_transcript.done":
            await database_sync_to_async(_transcript)(
                session_id, event.get("item_id"), "assistant", event.get("transcript")
            )

    async def record(self, session_id, response_id, usage):
        try:
            result = await database_sync_to_async(_record_verified)(session_id, response_id, usage)
        except (UsageError, ModelPrice.DoesNotExist) as exc:
            log.warning("verified usage of session %s not recorded: %s", session_id, exc)
            return
        record, created, totals, to_stop = result
        layer = get_channel_layer()
        if created:
            await announce_spend(layer, {
                "session_id": str(session_id), "team_id": totals.pop("team_id"), "response_id": response_id,
                "cost_usd": f"{record.cost_usd:.6f}", "verified": True, "session": totals,
            })
        for stopped_id, stopped_call in to_stop:
            await stop_for_budget(layer, stopped_id, stopped_call)


def _end(session_id, reason):
    try:
        return RealtimeSession.objects.get(pk=session_id).end(reason)
    except RealtimeSession.DoesNotExist:
        return False


def _record_verified(session_id, response_id, usage):
    session = RealtimeSession.objects.select_related("user", "team").get(pk=session_id)
    price = ModelPrice.objects.get(model=session.model)
    counts = parse_usage(usage, price)
    record, created = session.record_usage(response_id, counts, cost_of(counts, price), source=UsageRecord.SERVER)
    to_stop = session.stop_if_over_budget() if created else []
    totals = {**session.totals(), "team_id": str(session.team_id) if session.team_id else None}
    return record, created, totals, to_stop


def _transcript(session_id, item_id, role, text):
    if isinstance(item_id, str) and isinstance(text, str) and 0 < len(item_id) <= 128:
        TranscriptEntry.objects.get_or_create(
            session_id=session_id, item_id=item_id, defaults={"role": role, "text": text[:20_000]}
        )
