import asyncio
import json
import logging
import re
from urllib.parse import parse_qs

from channels.db import DatabaseSyncToAsync, database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from . import usage
from .models import MAX_TRANSCRIPT_CHARS, Call, EndReason, RealtimeSession, TranscriptEntry, UsageRecord
from .pricing import UsageError
from .text import clean_text

log = logging.getLogger(__name__)

MAX_FRAME_CHARS = 64 * 1024
ID_PATTERN = re.compile(r"[A-Za-z0-9_\-.:]{1,128}")
# A call number as a page says it in its socket's URL (at most 2**31 - 1, as stored).
CALL_NUMBER = re.compile(r"[1-9][0-9]{0,9}")
MAX_CALL_NUMBER = 2**31 - 1
ALL_TEAMS_GROUP = "dashboard-all"


def parallel_db(func):
    """Like database_sync_to_async, but on the shared thread pool instead of the one
    thread per process: reports from many sockets are stored side by side (the
    unique constraint and F() updates keep them exact)."""
    return DatabaseSyncToAsync(func, thread_sensitive=False)


def dashboard_groups(team_id):
    """Where a spend update goes: staff hear every team ("dashboard-all"), a team's admins their team."""
    return [ALL_TEAMS_GROUP] + ([f"dashboard-team-{team_id}"] if team_id else [])


class KeptOnLayer:
    """One instance per channel layer, kept on it (as `attribute`), so no state lives in this module."""

    attribute = None

    @classmethod
    def of(cls, layer):
        kept = getattr(layer, cls.attribute, None)
        if kept is None:
            kept = cls(layer)
            setattr(layer, cls.attribute, kept)
        return kept


class SpendBatcher(KeptOnLayer):
    """Spend updates leave a process in batches: an update finding the batcher idle goes at once,
    and after that at most one layer message per group per GAP_SECONDS carries everything that
    arrived meanwhile, so the layer (one Redis list per receiving process) keeps up when hundreds of
    reports arrive a second; each dashboard socket still sends one frame per update."""

    attribute = "spend_batcher"
    GAP_SECONDS = 0.01

    def __init__(self, layer):
        self.layer = layer
        self.pending = {}  # group -> updates
        self.flushing = None
        self.last_sent = float("-inf")  # loop time of the last batch

    def add(self, update):
        loop = asyncio.get_running_loop()
        if self.flushing is not None and self.flushing.get_loop() is not loop:
            # A loop that stopped before its flush ran (tests run one loop each): its updates died with it.
            self.pending, self.flushing, self.last_sent = {}, None, float("-inf")
        for group in dashboard_groups(update.get("team_id")):
            self.pending.setdefault(group, []).append({"type": "spend.update", **update})
        if self.flushing is None or self.flushing.done():
            self.flushing = loop.create_task(self.flush())

    async def flush(self):
        # Until nothing is left: updates added while a batch was being sent go in the next one (this
        # task is still running then, so add() starts no other).
        loop = asyncio.get_running_loop()
        while self.pending:
            wait = self.last_sent + self.GAP_SECONDS - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.last_sent = loop.time()
            pending, self.pending = self.pending, {}
            for group, updates in pending.items():
                await tell(self.layer, group, {"type": "spend.batch", "updates": updates})


class UsageRecorder(KeptOnLayer):
    """The page reports of every socket in a process are stored together: while one batch is in the
    database, the next gathers (at most IN_FLIGHT batches at once, each at most MAX_BATCH reports). A
    lone report goes at once; under load a transaction, its locks and its round trips serve many."""

    attribute = "usage_recorder"
    MAX_BATCH = 200
    IN_FLIGHT = 2

    def __init__(self, layer):
        self.layer = layer
        self.waiting = []  # (usage.Report, future)
        self.workers = set()
        self.orphans = set()  # budget stops of reports whose socket went away before its answer

    async def record(self, report):
        loop = asyncio.get_running_loop()
        self.workers = {task for task in self.workers if not task.done() and task.get_loop() is loop}
        future = loop.create_future()
        self.waiting.append((report, future))
        if len(self.workers) < self.IN_FLIGHT:
            task = loop.create_task(self.drain())
            self.workers.add(task)
        return await future

    async def store(self, reports):
        """One Recorded, or the exception, per report. When the database failed, every report of the
        batch hears it; any other failure is met again one report at a time, so that a report no one
        foresaw breaking the batch fails alone."""
        try:
            return await parallel_db(usage.record_many)(reports)
        except DatabaseError as exc:
            return [exc] * len(reports)
        except Exception as exc:
            if len(reports) > 1:
                return [result for report in reports for result in await self.store([report])]
            log.exception("a usage report could not be stored")
            return [exc]

    async def drain(self):
        while self.waiting:
            batch, self.waiting = self.waiting[:self.MAX_BATCH], self.waiting[self.MAX_BATCH:]
            results = await self.store([report for report, _ in batch])
            for (_, future), result in zip(batch, results):
                # The dashboards hear of it here, once it is stored: whether or not the socket that
                # sent it is still waiting (a socket closing mid-report used to take its update along).
                if isinstance(result, usage.Recorded):
                    tell_dashboards(self.layer, result)
                if future.done():  # its socket went away; a budget it crossed still ends what it must
                    if isinstance(result, usage.Recorded) and result.stopped:
                        task = asyncio.get_running_loop().create_task(stop_for_budget(self.layer, result.stopped))
                        self.orphans.add(task)
                        task.add_done_callback(self.orphans.discard)
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def session_group(session_id):
    return f"session-{session_id}"


async def tell(channel_layer, group, message):
    """A live push to a group; with the layer (Redis) away it is skipped, never an error: the
    database has the truth, and pages and dashboards re-read it when they reconnect."""
    try:
        await channel_layer.group_send(group, message)
        return True
    except Exception as exc:  # the layer's own errors vary (Redis, full channel); all mean "not now"
        log.warning("live push to %s skipped: %s", group, type(exc).__name__)
        return False


class GroupMember:
    """Consumers that join groups: joining may fail (Redis away) without failing the socket."""

    groups_joined = ()

    async def join(self, *groups):
        self.groups_joined = groups
        for group in groups:
            try:
                await self.channel_layer.group_add(group, self.channel_name)
            except Exception as exc:  # see tell(): the socket works on without live pushes
                log.warning("could not join %s (%s); the socket works without live pushes", group,
                            type(exc).__name__)

    async def leave(self):
        for group in self.groups_joined:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # a group entry left behind expires in the layer
                log.info("could not leave %s (%s)", group, type(exc).__name__)

    async def layer_reconnected(self, event):
        # Redis came back, perhaps restarted and without our groups: join them again.
        await self.join(*self.groups_joined)


async def announce_ended(channel_layer, session_ids):
    """Dashboards show a conversation's duration once it ends: send them its row."""
    @parallel_db
    def updates():
        sessions = RealtimeSession.objects.listed().filter(pk__in=list(session_ids))
        return [usage.dashboard_update(session) for session in sessions]

    try:
        for update in await updates():
            SpendBatcher.of(channel_layer).add(update)
    except Exception:  # the figures are right on the next read; the end itself is done
        log.exception("could not tell the dashboards that a conversation ended")


async def stop_for_budget(channel_layer, stopped):
    """For each conversation a crossed budget ended ([(session id, {upstream call id: sealed secret})]): tell
    its pages and hang its calls up upstream."""
    from .sideband import hang_up  # the sideband builds on this module

    for session_id, calls in stopped:
        await announce_ended(channel_layer, [session_id])
        await tell(
            channel_layer, session_group(session_id),
            {"type": "budget.exceeded", "message": "The spending limit was reached, so this session was ended."},
        )
        await hang_up(calls, "over budget")


def tell_dashboards(channel_layer, recorded):
    """Queue a usage record's spend update for the dashboards, once (the recorder and publish_usage both
    call this; whichever comes first sends it)."""
    if recorded.update and not recorded.dashboards_told:
        recorded.dashboards_told = True
        SpendBatcher.of(channel_layer).add(recorded.update)


async def publish_usage(channel_layer, session_id, recorded, ack_page=None):
    """After a usage record: the dashboards hear of new spend first (queued at once), then the page its
    ack (`ack_page`, for a page's own report) or the server's own figures, and a crossed budget ends
    what it must. A page that is gone by its ack (it closed on an earlier one, or the send fails) must
    not take the dashboards' update with it."""
    record = recorded.record
    tell_dashboards(channel_layer, recorded)
    if ack_page is not None:
        await ack_page()
    if recorded.created:
        if record.source == UsageRecord.SERVER:
            await tell(channel_layer, session_group(session_id), {
                "type": "usage.verified", "response_id": record.response_id, "kind": record.kind,
                "cost_usd": f"{record.cost_usd:.8f}", "session": recorded.totals,
            })
    await stop_for_budget(channel_layer, recorded.stopped)


class SessionUsageConsumer(GroupMember, AsyncJsonWebsocketConsumer):
    """The page reports each response's usage here; the server prices, stores and acks it."""

    async def connect(self):
        user = self.scope["user"]
        self.session_id = self.scope["url_route"]["kwargs"]["session_id"]
        self.page_connected_at = None
        # The call the page holds (`?call=N`); a socket that does not say is taken to hold the newest.
        said = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("call")
        self.call_number = None
        if said:
            if not CALL_NUMBER.fullmatch(said[-1]) or int(said[-1]) > MAX_CALL_NUMBER:
                await self.close(code=4400)  # a call number that cannot be one: refused, as a bad request
                return
            self.call_number = int(said[-1])
        if not user.is_authenticated or not await self.owns_session(user):
            await self.close()
            return
        await self.join(session_group(self.session_id))
        await self.accept()
        # A page that (re)connects learns what it may have missed: the totals, and which calls are ready.
        frames, ended_calls = await self.mark_page(connected=True)
        for frame in frames:
            await self.send_json(frame)
        if ended_calls is not None:
            from .sideband import hang_up  # the sideband builds on this module

            await hang_up(ended_calls, "another conversation was running")
            await announce_ended(self.channel_layer, [self.session_id])

    async def disconnect(self, code):
        if self.groups_joined:
            await self.leave()
            # The sideband worker ends a call whose page stays away too long: a mark lost to a database
            # hiccup would leave the conversation looking held, and billed, until the upstream's cap.
            from .sideband import retry_db  # the sideband builds on this module

            await retry_db(self.mark_page, f"session {self.session_id} page left", connected=False)

    @database_sync_to_async
    def mark_page(self, connected):
        """Mark this page as the conversation's, or gone; on connect returns (frames for the page, the
        upstream calls to hang up if this ended the conversation, else None)."""
        sessions = RealtimeSession.objects.filter(pk=self.session_id)
        if not connected:
            # Only the page that connected last holding the newest call counts: an older tab letting go of
            # a conversation that went on in a newer one does not make it look abandoned.
            if self.page_connected_at is not None:
                sessions.filter(page_connected_at=self.page_connected_at).update(page_left_at=timezone.now())
            return None
        ended_calls, session = None, None
        if self.call_number is None:
            self._hold(sessions)
        else:
            # A tab holding an earlier call than the newest (the conversation moved on while its socket was
            # down) reconnects as a listener: it is not the conversation's page.
            later = Call.objects.filter(session=OuterRef("pk"), number__gt=self.call_number)
            with transaction.atomic():
                # One person's pages connect one at a time (the person's row is the lock), so of two
                # conversations started at once (two devices, one moment) the second to connect sees the first.
                list(get_user_model().objects.select_for_update().filter(pk=self.scope["user"].pk).values("pk"))
                if self._hold(sessions.filter(~Exists(later))):
                    others = RealtimeSession.objects.held().filter(user=self.scope["user"])
                    if others.exclude(pk=self.session_id).exists():
                        session = RealtimeSession.objects.get(pk=self.session_id)
                        ended_calls = session.end(EndReason.RUNNING_ELSEWHERE)
        session = session or RealtimeSession.objects.get(pk=self.session_id)
        if ended_calls is not None:
            return [{"type": "session.totals", "session": session.totals()},
                    {"type": "call.ended", "call": None, "reason": EndReason.RUNNING_ELSEWHERE}], ended_calls
        ready = session.calls.filter(status=Call.ACTIVE, context_ready_at__isnull=False).values_list("number", flat=True)
        return [{"type": "session.totals", "session": session.totals()}] + [
            {"type": "call.ready", "call": number} for number in ready
        ], None

    def _hold(self, sessions):
        """This page is the conversation's now; False if `sessions` no longer names it."""
        now = timezone.now()
        if sessions.update(page_connected_at=now):
            self.page_connected_at = now
            return True
        return False

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            return await self.error("invalid_frame", "Send JSON text frames.")
        if len(text_data) > MAX_FRAME_CHARS:
            return await self.error("frame_too_large", "The frame is too large.")
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            return await self.error("invalid_json", "The frame is not JSON (or nested too deep).")
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            return await self.error("invalid_frame", "The frame must be a JSON object.")
        kind = content.get("type")
        if kind == "usage.report":
            await self.usage_report(content)
        elif kind == "transcript.report":
            await self.transcript_report(content)
        elif kind == "call.closed":
            await self.call_closed(content)
        else:
            await self.error("unknown_type", "type must be usage.report, transcript.report or call.closed.")

    async def usage_report(self, content):
        # An answer's usage names its response; an input transcription's, the transcribed item.
        kind = UsageRecord.TRANSCRIPTION if "item_id" in content else UsageRecord.RESPONSE
        key = content.get("item_id" if kind == UsageRecord.TRANSCRIPTION else "response_id")
        if not isinstance(key, str) or not ID_PATTERN.fullmatch(key):
            return await self.error("invalid_response_id", "response_id (or item_id) must be the upstream's id.")
        try:
            recorded = await self.record_usage(key, content.get("usage"), kind)
        except UsageError as exc:
            return await self.error("invalid_usage", str(exc), response_id=key)
        except DatabaseError:  # for now: the page sends it again shortly
            return await self.error("unavailable", "The database is away; the report was not stored. It is sent "
                                    "again shortly.", response_id=key)
        except Exception:  # a fault of ours, logged where it happened: this report alone is lost
            return await self.error("not_recorded", "The server could not record this report; it was not stored.",
                                    response_id=key)
        record = recorded.record
        ack = {
            "type": "usage.ack",
            "duplicate": not recorded.created,
            "cost_usd": f"{record.cost_usd:.8f}",
            "session": recorded.totals,
        }
        ack["item_id" if kind == UsageRecord.TRANSCRIPTION else "response_id"] = key
        await publish_usage(self.channel_layer, self.session_id, recorded, ack_page=lambda: self.send_json(ack))

    async def transcript_report(self, content):
        item_id, role, text = content.get("item_id"), content.get("role"), content.get("text")
        if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id):
            return await self.error("invalid_item_id", "item_id must be the conversation item's id.")
        if role not in (TranscriptEntry.USER, TranscriptEntry.ASSISTANT):
            return await self.error("invalid_role", "role must be user or assistant.")
        if not isinstance(text, str) or len(text) > MAX_TRANSCRIPT_CHARS:
            return await self.error("invalid_text", "text must be a string of at most 20,000 characters.")
        try:
            await self.store_transcript(item_id, role, clean_text(text))
        except DatabaseError:  # the page keeps it and sends it again shortly
            return await self.error("unavailable", "The database is away; the transcript line was not stored. It "
                                    "is sent again shortly.", item_id=item_id)
        await self.send_json({"type": "transcript.ack", "item_id": item_id})

    async def call_closed(self, content):
        """The page closed one of the conversation's calls (its connection was lost): the call is over on
        the record and hung up. Only the page knows this for sure; a sideband refused by the upstream does
        not mean the call ended (FACTS section 7). The hangup makes a page's word true even if it was not."""
        number = content.get("call")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_CALL_NUMBER:
            return await self.error("invalid_call", "call must be the number of one of this conversation's calls.")
        try:
            found = await self.end_closed_call(number)
        except DatabaseError:  # the page keeps it and says it again shortly
            return await self.error("unavailable", "The database is away; the call was not ended yet. It is said "
                                    "again shortly.", call=number)
        if found is None:
            return await self.error("invalid_call", "This conversation has no such call.", call=number)
        call_id, sealed_secret, ended_now, reason = found
        if ended_now:
            from .sideband import hang_up  # the sideband builds on this module

            await hang_up({call_id: sealed_secret}, "the page closed it")
        # The page's answer: the call is over, and why (another reason if it had ended before).
        await self.send_json({"type": "call.ended", "call": number, "reason": reason})

    @parallel_db
    def end_closed_call(self, number):
        call = Call.objects.filter(session_id=self.session_id, number=number).first()
        if call is None:
            return None
        sealed_secret = call.sealed_secret  # ending the call wipes it from the record; the hangup may need it
        ended_now = call.end(EndReason.CALL_CLOSED)
        return call.call_id, sealed_secret, ended_now, call.end_reason

    async def error(self, code, message, **about):
        """An error frame; `about` names what it is about (response_id, item_id of a transcript line, call)."""
        await self.send_json({"type": "error", "code": code, "message": message,
                              **{k: v for k, v in about.items() if v is not None}})

    async def budget_exceeded(self, event):
        await self.send_json({"type": "budget.exceeded", "message": event.get("message", "")})

    async def usage_verified(self, event):
        await self.send_json(event)

    async def call_ready(self, event):
        await self.send_json(event)

    async def call_ended(self, event):
        await self.send_json(event)

    async def answer_sources(self, event):
        await self.send_json(event)

    @database_sync_to_async
    def owns_session(self, user):
        return RealtimeSession.objects.filter(pk=self.session_id, user=user).exists()

    async def record_usage(self, key, report, kind):
        return await UsageRecorder.of(self.channel_layer).record(
            usage.Report(self.session_id, key, report, source=UsageRecord.CLIENT, kind=kind))

    @parallel_db
    def store_transcript(self, item_id, role, text):
        TranscriptEntry.record_text(self.session_id, item_id, role, text, source="page")


class DashboardConsumer(GroupMember, AsyncJsonWebsocketConsumer):
    """Live spend for staff (every team) and team admins (their teams): each joins only the groups
    it may hear, so no message is filtered here."""

    recheck = None

    async def connect(self):
        user = self.scope["user"]
        groups = await self.groups_for(user.pk) if user.is_authenticated else []
        if not groups:
            await self.close()
            return
        await self.join(*groups)
        await self.accept()
        self.recheck = asyncio.create_task(self.keep_checking(user.pk))

    async def disconnect(self, code):
        if self.recheck is not None:
            self.recheck.cancel()
        await self.leave()

    async def keep_checking(self, user_id):
        """Who may hear which team's spend is read again every few seconds: a person demoted, removed from
        a team, no longer staff or deactivated stops hearing it (the page reconnects and is let into the
        groups it may hear now, if any, and reads the figures again)."""
        while True:
            await asyncio.sleep(settings.DASHBOARD_RECHECK_SECONDS)
            try:
                groups = await self.groups_for(user_id)
            except DatabaseError:
                continue  # asked again next time
            if set(groups) != set(self.groups_joined):
                await self.close(code=4403)
                return

    async def layer_reconnected(self, event):
        # Redis is back: join the groups again, and have the page read the figures once more, since
        # the updates sent while Redis was away never reached this socket.
        await super().layer_reconnected(event)
        await self.send_json({"type": "dashboard.resync"})

    async def receive_json(self, content, **kwargs):
        await self.send_json({"type": "error", "code": "read_only", "message": "This socket only sends."})

    async def receive(self, text_data=None, bytes_data=None):
        await self.receive_json(None)

    async def dispatch(self, message):
        # Channels closes stale database connections before every handler, on
        # the one thread per process that usage storage also queues on; spend
        # batches touch no database, so they must not wait there.
        if message.get("type") == "spend.batch":
            await self.spend_batch(message)
        else:
            await super().dispatch(message)

    async def spend_batch(self, event):
        for update in event["updates"]:
            await self.send_json(update)

    @database_sync_to_async
    def groups_for(self, user_id):
        from teams_app.models import Team

        user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
        if user is None:
            return []
        if user.is_staff:
            return [ALL_TEAMS_GROUP]
        return [f"dashboard-team-{pk}" for pk in Team.objects.spend_visible_to(user).values_list("pk", flat=True)]


class NoSuchSocket(AsyncJsonWebsocketConsumer):
    """Every socket path no consumer serves: refused at the handshake."""

    async def connect(self):
        await self.close()
