"""The sideband worker: the server's own connection to every running call.

For each active call one worker holds the upstream's sideband WebSocket
(`?call_id=`) for the call's whole life. Through it the server puts the
documents (and, in a resumed call, the earlier turns) into the call's context,
records every answer's and every input transcription's usage as verified (the
bill), keeps the transcript in the conversation's order, and restores the
session values a page changed. It tries the API key first and the call's own
secret when the key is refused, reconnects with backoff after a drop or a
refusal, and ends a call only when the upstream says it is gone: a refused or
dropped sideband means "not verified for now", never "the call ended".

Workers find calls in the database and claim each with a renewable lease;
web processes wake them with a notice on the channel layer when they create a call, and
the periodic look at the database is the safety net. A stopped worker releases
its calls so another takes them at once; a killed one's lapse. Database and
upstream errors are logged and retried, never fatal.
"""

import asyncio
import datetime
import functools
import json
import logging
import os
import random
import re
import socket
from concurrent.futures import ThreadPoolExecutor

from channels.layers import get_channel_layer
from django import db
from django.conf import settings
from django.db.models import Max
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from documents_app.models import Document
from voiceproject.prepared import Prepared, PreparedUpdate

from . import context, tools, upstream, usage
from .consumers import announce_ended, publish_usage, session_group, tell
from .models import (
    Call, EndReason, RealtimeSession, SessionEvent, Source, ToolCall, TranscriptEntry, UsageRecord, WorkerBeat,
)
from .pricing import UsageError

log = logging.getLogger(__name__)

WAKE_TOPIC = "sideband-wake"
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
DB_RETRIES = 4
# A replaced call is the page's to close once its next call is up; after this the server hangs it up.
REPLACED_GRACE = datetime.timedelta(seconds=10)
# Past the cap and this margin a call cannot be alive, whatever was (not) seen.
CAP_MARGIN = datetime.timedelta(seconds=60)
# Where the conversation's own items come from: these are not turns of the transcript.
CONTEXT_PREFIX = "ctx"


# The worker's ORM work runs on a few threads of its own, each keeping its
# database connection open from one call to the next (opening one per call was
# most of the CPU a started call cost); a database error closes that thread's
# connections, so the next call opens a fresh one.
_DB_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sideband-db")
# The sweeps across all conversations run on every this many looks at the database.
SWEEP_EVERY = 5


def _in_db_thread(func, args, kwargs):
    try:
        return func(*args, **kwargs)
    except db.Error:
        db.connections.close_all()
        raise


async def retry_db(work, what, *args, **kwargs):
    """Await `work` (ORM work on a thread), retried with backoff through a database hiccup (a lock,
    a dropped connection); None if it keeps failing."""
    delay = BACKOFF_FIRST
    for attempt in range(DB_RETRIES):
        try:
            return await work(*args, **kwargs)
        except db.Error as exc:
            log.warning("%s: database error (%s), attempt %d", what, type(exc).__name__, attempt + 1)
            if attempt + 1 < DB_RETRIES:
                await asyncio.sleep(delay)
                delay = _backoff(delay)
    return None


def _db(func):
    """Run ORM work on the worker's database threads (calls are watched side by side)."""

    async def call(*args, **kwargs):
        work = functools.partial(_in_db_thread, func, args, kwargs)
        return await asyncio.get_running_loop().run_in_executor(_DB_THREADS, work)

    return call


def _watched(pk):
    """A call with what its watch reads of it and of its conversation (not the whole conversation's row)."""
    return Call.objects.select_related("session").only(
        "call_id", "number", "status", "end_reason", "ended_at", "session_id", "sealed_secret", "sideband_credential",
        "sideband_attached_at", "context_ready_at",
        "session__session_config", "session__documents", "session__pasted_text", "session__user_id",
    ).filter(pk=pk)


# Every attach reads its call: compiled once (0.9 ms of CPU a read, 0.06 compiled); and writes it.
_call_to_watch = Prepared(_watched, pk=int)
_update_call = PreparedUpdate(Call)


async def wake_workers(*call_pks):
    """Tell the sideband workers these calls were created (or let go), so one attaches at once. With
    the layer away the wake-up is skipped: their look at the database every poll finds the calls anyway."""
    try:
        await get_channel_layer().publish(WAKE_TOPIC, {"calls": list(call_pks)})
    except Exception as exc:  # the layer's own errors vary (Redis away, a timeout); all mean "not now"
        log.warning("sideband wake-up skipped: %s", type(exc).__name__)


async def hand_over(call):
    """A call this process just created goes to its sideband worker: straight to the worker in this
    process when the call was leased to it as it was made (no wake-up, claim or read), otherwise to
    whichever worker claims it after a wake-up."""
    worker = local_worker()
    if worker is not None and call.sideband_owner == worker.name:
        worker.adopt(call)
    else:
        await wake_workers(call.pk)


def local_worker():
    """The sideband worker running in this process's event loop (SIDEBAND_WORKER=inprocess), or None."""
    worker = getattr(get_channel_layer(), "sideband_worker", None)
    if worker is None or worker.loop is not asyncio.get_running_loop():
        return None
    return worker


async def tell_page(session_id, message):
    """A live notice to the conversation's page (skipped while the layer is away)."""
    await tell(get_channel_layer(), session_group(session_id), message)


def _backoff(delay):
    return min(BACKOFF_MAX, delay * 2) * random.uniform(0.8, 1.2)


class SidebandWorker:
    def __init__(self, name=None, poll_seconds=1.0, lease_seconds=None, page_grace_seconds=None, take_over=False,
                 local=False):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        # The worker inside a web process: that process's new calls are leased to it as they are made.
        self.local = local
        self.loop = None
        self.poll_seconds = poll_seconds
        self.lease = datetime.timedelta(seconds=lease_seconds or settings.SIDEBAND_LEASE_SECONDS)
        grace = settings.PAGE_GONE_SECONDS if page_grace_seconds is None else page_grace_seconds
        self.page_grace = datetime.timedelta(seconds=grace)
        # One machine, one worker: whatever an earlier run of this process held is this run's now.
        self.take_over = take_over
        self.watching = {}  # call pk -> CallWatch
        self.woken = asyncio.Event()
        self.woken_calls = set()  # the calls the web processes named since the last look
        # When (event loop time) the next full look, lease renewal and sweep are due: by the clock, so a
        # burst of wake-ups costs one claim of the named call each and nothing across all the calls.
        self.look_at = self.renew_at = self.police_at = 0.0

    async def run(self, stop):
        """Claim, watch and police calls until `stop` is set; then release them to the other workers."""
        self.loop = asyncio.get_running_loop()
        layer = get_channel_layer()
        if self.local:
            layer.sideband_worker = self
        listener = asyncio.create_task(self.listen())
        if self.take_over:
            await self.guarded(self.release_all)
        try:
            while not stop.is_set():
                await self.tick()
                self.woken.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.woken.wait())]
                await asyncio.wait(waiters, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            if getattr(layer, "sideband_worker", None) is self:
                layer.sideband_worker = None
            listener.cancel()
            watches = list(self.watching.values())
            for watch in watches:
                watch.task.cancel()
            await asyncio.gather(listener, *(w.task for w in watches), return_exceptions=True)
            await self.guarded(self.release)
            # The others take the released calls now rather than at their next look.
            if watches:
                await wake_workers(*(watch.pk for watch in watches))

    async def tick(self):
        now = asyncio.get_running_loop().time()
        named, self.woken_calls = self.woken_calls, set()
        if now >= self.look_at:
            self.look_at = now + self.poll_seconds
            await self.guarded(self.claim_and_watch)
        elif named:
            await self.guarded(self.claim_and_watch, named)
        if now >= self.renew_at:
            # A lease is several polls long: renewing every other poll keeps it with room to spare.
            self.renew_at = now + min(2 * self.poll_seconds, self.lease.total_seconds() / 3)
            await self.guarded(self.renew)
        if now >= self.police_at:
            self.police_at = now + SWEEP_EVERY * self.poll_seconds
            await self.guarded(self.police)
            await self.guarded(self.beat)

    async def guarded(self, step, *args):
        """A database or upstream fault in one step is logged; the worker goes on."""
        try:
            await (step(*args) if asyncio.iscoroutinefunction(step) else _db(step)(*args))
        except db.Error as exc:
            log.warning("sideband worker %s: database error in %s (%s); retrying", self.name, step.__name__,
                        type(exc).__name__)
        except upstream.UpstreamError as exc:
            log.warning("sideband worker %s: upstream error in %s: %s", self.name, step.__name__, exc.message)

    async def listen(self):
        """Wake up whenever a web process says it created a call."""
        delay = BACKOFF_FIRST
        while True:
            try:
                async with get_channel_layer().subscribe(WAKE_TOPIC) as wake_up:
                    while True:
                        message = await wake_up()
                        calls = message.get("calls") if isinstance(message, dict) else None
                        if isinstance(calls, list):
                            self.woken_calls.update(pk for pk in calls if isinstance(pk, int))
                        self.woken.set()
                        delay = BACKOFF_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the layer (Redis) is away: the database poll still finds calls
                log.warning("sideband worker %s cannot hear wake-ups (%s); retrying", self.name, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = _backoff(delay)

    # ---- claims ----

    async def claim_and_watch(self, only=None):
        """Claim the running calls free of a lease (of these only, when the web processes named them)."""
        for pk in await _db(self.claim)(only):
            self.watch(pk)

    def adopt(self, call):
        """Watch a call made in this process and leased to this worker in the same insert; the call's
        row (with its conversation) is what the watch would have read."""
        if call.pk not in self.watching:
            self.watch(call.pk, call)

    def watch(self, pk, row=None):
        watch = CallWatch(self, pk, row)
        self.watching[pk] = watch
        watch.task = asyncio.create_task(watch.run())

    def claim(self, only=None):
        if only is not None:
            return Call.objects.claim_these(self.name, self.lease, [pk for pk in only if pk not in self.watching])
        # The calls watched here hold this worker's lease, so they are not claimable; one whose lease
        # lapsed (the worker was held up) is claimed back, not watched twice. Leaving them out in SQL
        # instead cost a parameter per watched call on every poll (12 ms a poll at 800 calls).
        return [pk for pk in Call.objects.claim(self.name, self.lease) if pk not in self.watching]

    async def renew(self):
        owned, ended = await _db(self._renew)(list(self.watching))
        for pk, watch in list(self.watching.items()):
            if pk not in owned:
                # Another worker holds it now (this one was away longer than its lease).
                watch.task.cancel()
            elif pk in ended:
                watch.record_ended(*ended[pk])
        for pk in owned - self.watching.keys() - ended.keys():
            # A running call leased to this worker that it does not watch (its watch ended early, or
            # the call was leased to it as it was made and is about to be adopted): watched now.
            self.watch(pk)

    def _renew(self, pks):
        return Call.objects.renew(self.name, pks, self.lease)

    def release(self):
        Call.objects.release(self.name)
        WorkerBeat.objects.filter(name=self.name).delete()

    def beat(self):
        WorkerBeat.objects.update_or_create(name=self.name, defaults={"seen_at": timezone.now(),
                                                                      "watching": len(self.watching)})

    def release_all(self):
        Call.objects.release()

    # ---- policing across calls ----

    async def police(self):
        ended = await _db(self._sweep)()
        for session_id, calls, reason in ended:
            await hang_up(calls, reason)
            await tell_page(session_id, {"type": "call.ended", "call": None, "reason": reason})
        if ended:
            await announce_ended(get_channel_layer(), [session_id for session_id, _, _ in ended])

    def _sweep(self):
        """End conversations whose page went away, that no call resumed in time, and calls past the cap."""
        cap = datetime.timedelta(seconds=settings.CALL_MAX_SECONDS) + CAP_MARGIN
        return RealtimeSession.objects.sweep(self.page_grace, cap)


async def hang_up(calls, why):
    """Hang up calls the record says ended: {upstream id: sealed secret}, as ending them returned."""
    for call_id, sealed_secret in calls.items():
        try:
            await upstream.hangup(call_id, sealed_secret)
        except upstream.UpstreamError as exc:
            log.warning("hangup of %s (%s) failed: %s", call_id, why, exc.message)


class CallWatch:
    """One call, watched over its life: attach, listen, reattach, until the upstream says it is gone."""

    GONE = "gone"
    CLOSED = "closed"
    REFUSED = "refused"

    def __init__(self, worker, pk, row=None):
        self.worker = worker
        self.pk = pk
        self.row = row  # the call as its creator saved it (adopted): no need to read it
        self.task = None
        self.ws = None
        self.ended = None  # (reason, ended_at) once the record says the call ended
        self.hung_up = False
        self.hanging_up = None  # the hangup under way since the record said the call ended
        self.expired = False
        self.unbounded = set()  # responses the upstream said have no output limit ("inf"): judged when done
        self.cut_at = {}  # answers the page cut off, read back: item id -> where the audio stopped (ms)
        self.pending_context = set()
        self.position = 0
        self.info = None
        # Tool calls: the responses running now, the outputs waiting for their response to end,
        # the response.create owed for each answered batch, and which answer each batch was for.
        self.active = set()
        self.outputs = {}  # response id -> [(function call id, output, tool call pk)]
        self.owed = []  # one per batch still to be answered: the tool call pks its answer is for (maybe none)
        self.creating = None  # (marker, tool call pks) of a response.create sent, not yet seen created
        self.answer_for = {}  # response id -> [tool call pk]
        self.asked = 0  # the response.create sent so far: each one's marker starts with its number

    # ---- the loop ----

    async def run(self):
        delay = BACKOFF_FIRST
        try:
            # Read once: from here on the watch keeps what it changes, and the worker's lease renewal
            # tells it when the record says the call ended (a retry costs no database work).
            info = self.describe(self.row) if self.row is not None else await self.retry_db(self.load)
            self.row = None
            if info is None:
                return
            self.info = info
            if info["status"] == Call.ENDED:
                self.ended = (info["end_reason"], info["ended_at"])
            while True:
                if self.ended is not None:
                    await (self.hanging_up or self.hang_up_when_due())
                    return
                outcome = await self.attach_and_listen()
                if outcome == self.GONE:  # the cap's session_expired: nothing else tells a watch a call is gone
                    reason = EndReason.EXPIRED
                    await self.retry_db(self.end_call, reason)
                    await tell_page(info["session_id"], {"type": "call.ended", "call": info["number"], "reason": reason})
                    return
                if outcome == self.CLOSED and not self.expired:
                    # It was up: look again at once, the call is most likely alive, unless the record
                    # says it ended (the person pressed End and the server hung it up, which closed it).
                    self.ended = self.ended or await self.retry_db(self.ended_on_record)
                    delay = BACKOFF_FIRST
                    continue
                await asyncio.sleep(delay)
                delay = _backoff(delay)
        finally:
            self.worker.watching.pop(self.pk, None)

    def record_ended(self, reason, ended_at):
        """The record says the call ended (stop, budget, page gone, replaced...): make sure it is hung up."""
        if self.ended is None:
            self.ended = (reason, ended_at)
            self.hanging_up = asyncio.ensure_future(self.hang_up_when_due())

    async def hang_up_when_due(self):
        """Hang up a call the server ended; a replaced call only once the page had time to close it."""
        reason, ended_at = self.ended
        # A call past the cap is gone. One the page said it closed is hung up here too, with retries: the
        # hangup made when the page said so may have failed, and a call left running goes on being billed.
        if self.hung_up or reason == EndReason.EXPIRED:
            return
        if reason == EndReason.REPLACED and ended_at:
            await asyncio.sleep(max(0.0, (ended_at + REPLACED_GRACE - timezone.now()).total_seconds()))
        delay = BACKOFF_FIRST
        for _ in range(5):
            try:
                # The secret as the watch read it: ending the call wiped it from the record.
                await upstream.hangup(self.info["call_id"], self.info["sealed_secret"])
                self.hung_up = True
                return
            except upstream.UpstreamError as exc:
                log.info("hangup of %s failed: %s", self.info["call_id"], exc.message)
                await asyncio.sleep(delay)
                delay = _backoff(delay)

    @sensitive_variables("secret")
    async def attach_and_listen(self):
        """One attach: the first credential the upstream accepts, then every event until the socket closes."""
        for credential in self.credentials():
            secret = None
            if credential == Call.CALL_SECRET:
                # Unsealed only when it is tried: the API key is accepted on almost every attach.
                secret = upstream.unseal(self.info["sealed_secret"])
                if not secret:
                    continue
            try:
                async with upstream.sideband(self.info["call_id"], secret=secret) as ws:
                    self.ws = ws
                    try:
                        events = await self.retry_db(self.attached, credential)
                        await self.listen(ws, events)
                    finally:
                        self.ws = None
                return self.GONE if self.expired else self.CLOSED
            except upstream.SidebandDropped:  # it was up: a drop, as when the upstream closes it
                return self.CLOSED
            except upstream.UpstreamError:
                pass
        # Refused, even as unknown (404) by every credential, and even after one attached: "not verified
        # yet", never "the call ended" (FACTS section 7: the upstream has been seen to refuse both for a
        # live call). The record says when it ended: the page closed it, the person stopped, the page
        # went away, or the cap passed; the lease renewal tells this watch.
        return self.REFUSED

    def credentials(self):
        """The credentials to attach with: the API key first, then the call's own secret; the one that
        last worked goes first."""
        if self.info["sideband_credential"] == Call.CALL_SECRET:
            return [Call.CALL_SECRET, Call.API_KEY]
        return [Call.API_KEY, Call.CALL_SECRET]

    async def listen(self, ws, context_events):
        await self.put_context(ws, context_events)
        await self.resume_answers()
        async for message in ws:
            if message.type.name != "TEXT":
                break
            try:
                event = json.loads(message.data)
            except ValueError:
                log.warning("sideband of call %s sent a frame that is not JSON", self.info["call_id"])
                continue
            if not isinstance(event, dict):
                continue
            try:
                await self.handle(event)
            except upstream.DROPPED:
                raise  # the connection broke under a send: a drop, which the attach handles
            except Exception as exc:
                # One event handled wrongly (a bug, odd input) must not end the watch, and so the call's bill.
                log.error("call %s: a %.64s event could not be handled (%s)", self.info["call_id"],
                          event.get("type"), type(exc).__name__, exc_info=True)

    # ---- the context: documents, and the earlier turns of a resumed call ----

    async def put_context(self, ws, events):
        """Put the context `attached` read into the call; with nothing to put, the call was marked
        ready in the same update, and the page hears it."""
        if self.info["context_ready_at"] or events is None:  # None: the database kept failing; next attach
            return
        if not events:
            await self.tell_ready()
            return
        self.pending_context = {e["item"]["id"] for e in events}
        for event in events:
            await ws.send_str(context.encode_event(event).decode())

    def context_events(self):
        session = self.info["call"].session
        prefix = f"{CONTEXT_PREFIX}{self.info['number']}_"
        # Documents read whole go in; the searched ones are reached through the search tool.
        inline = [d for d in session.documents if d.get("mode", "inline") == "inline"]
        chosen = [d["id"] for d in inline if d.get("id") != "pasted"]
        # Access is checked for each call, as the search tool checks it: a document deleted or made private
        # since the conversation began, or in a team the user left, does not go in, and the model is told.
        readable = Document.objects.visible_to(session.user).filter(pk__in=chosen) if chosen else []
        texts = {str(d.pk): d for d in readable}
        documents, gone = [], []
        for doc in inline:
            if doc.get("id") == "pasted":
                documents.append({**doc, "text": session.pasted_text})
            elif doc["id"] not in texts:
                gone.append(doc["title"])
            elif texts[doc["id"]].sha256 == doc.get("sha256"):
                documents.append({**doc, "text": texts[doc["id"]].text})
            else:
                log.info("document %s of session %s changed; the call goes on without it", doc["id"], session.pk)
        events = context.document_events(documents, prefix)
        if gone:
            events.append(context.unavailable_event(gone, prefix))
        if self.info["number"] > 1:
            turns = [
                (t.role, t.text)
                for t in session.transcript.exclude(text="").filter(call_number__lt=self.info["number"])
            ]
            events += context.history_events(turns, settings.RESUME_HISTORY_TOKENS, prefix)
        return events

    async def context_ready(self):
        await self.retry_db(self.mark, context_ready_at=timezone.now())
        await self.tell_ready()

    async def tell_ready(self):
        self.info["context_ready_at"] = True
        await tell_page(self.info["session_id"], {"type": "call.ready", "call": self.info["number"]})

    async def context_item_done(self, item_id):
        if item_id in self.pending_context:
            self.pending_context.discard(item_id)
            if not self.pending_context:
                await self.context_ready()

    # ---- events ----

    async def handle(self, event):
        kind = event.get("type")
        if kind in ("session.created", "session.updated"):
            await self.police_session(event.get("session"))
        elif kind == "response.created":
            await self.response_created(event.get("response") or {})
        elif kind == "response.function_call_arguments.done":
            await self.tool_call(event)
        elif kind == "response.done":
            response = event.get("response") or {}
            if isinstance(response.get("usage"), dict) and isinstance(response.get("id"), str):
                await self.record(response["id"], response["usage"], UsageRecord.RESPONSE)
            await self.response_done(response)
        elif kind == "conversation.item.added":
            await self.item_added(event.get("item") or {})
        elif kind == "conversation.item.input_audio_transcription.completed":
            item_id = event.get("item_id")
            if isinstance(item_id, str):
                await self.text(item_id, TranscriptEntry.USER, event.get("transcript"))
                if isinstance(event.get("usage"), dict):
                    await self.record(item_id, event["usage"], UsageRecord.TRANSCRIPTION)
        elif kind in ("response.output_audio_transcript.done", "response.output_text.done"):
            text = event.get("transcript") if kind.endswith("transcript.done") else event.get("text")
            await self.text(event.get("item_id"), TranscriptEntry.ASSISTANT, text)
        elif kind == "conversation.item.truncated":
            # What was heard is what counts: read the cut item back.
            if isinstance(event.get("item_id"), str) and self.ws is not None:
                self.cut_at[event["item_id"]] = event.get("audio_end_ms")
                await self.ws.send_str(json.dumps({"type": "conversation.item.retrieve", "item_id": event["item_id"]}))
        elif kind == "conversation.item.retrieved":
            item = event.get("item") or {}
            if item.get("role") == "assistant":
                parts = [p.get("transcript") or p.get("text") or "" for p in item.get("content") or []
                         if isinstance(p, dict)]
                heard = " ".join(p for p in parts if p)
                cut = isinstance(item.get("id"), str) and item["id"] in self.cut_at
                cut_at = self.cut_at.pop(item["id"]) if cut else None
                if heard:
                    await self.text(item.get("id"), TranscriptEntry.ASSISTANT, heard)
                elif cut:
                    # The upstream kept no text of the cut answer (its reference says truncating removes the
                    # transcript): the answer's text stays, marked where the audio stopped.
                    await self.retry_db(TranscriptEntry.mark_cut, self.info["session_id"], item["id"], cut_at)
        elif kind == "error":
            await self.upstream_error(event)

    async def upstream_error(self, event):
        error = event.get("error") or {}
        if error.get("code") == "session_expired":
            # The 60-minute cap: the upstream ends the call now.
            self.expired = True
            return
        if (error.get("event_id") or "").startswith("answer-") and self.creating is not None:
            # Our response.create met a response already running: ask again when that one ends.
            self.owed.insert(0, self.creating[1])
            self.creating = None
        event_id = error.get("event_id") or ""
        if event_id.startswith("create-"):
            # One of our items was refused (a duplicate after a reattach is already there).
            await self.context_item_done(event_id[len("create-"):])
        log.info("upstream error on call %s: %s", self.info["call_id"], error.get("code"))

    async def item_added(self, item):
        item_id = item.get("id")
        if not isinstance(item_id, str):
            return
        if item_id.startswith(CONTEXT_PREFIX):
            await self.context_item_done(item_id)
            return
        role = item.get("role")
        if item.get("type") == "message" and role in (TranscriptEntry.USER, TranscriptEntry.ASSISTANT):
            self.position += 1
            await self.retry_db(
                TranscriptEntry.place, self.info["session_id"], self.info["number"], item_id, role, self.position
            )
            # A message typed during the call has its text in the item itself: no transcription follows.
            if role == TranscriptEntry.USER:
                typed = [p.get("text") for p in item.get("content") or []
                         if isinstance(p, dict) and p.get("type") == "input_text" and isinstance(p.get("text"), str)]
                if typed:
                    await self.text(item_id, role, " ".join(typed))

    async def text(self, item_id, role, text):
        # No text is no news: it never replaces what the page or an earlier event gave.
        if isinstance(item_id, str) and isinstance(text, str) and text and 0 < len(item_id) <= 128:
            await self.retry_db(TranscriptEntry.record_text, self.info["session_id"], item_id, role, text, "server")

    async def record(self, key, report, kind):
        try:
            recorded = await self.retry_db(
                usage.record, self.info["session_id"], key, report, source=UsageRecord.SERVER, kind=kind,
                call=self.info["call"],
            )
        except UsageError as exc:
            log.warning("verified usage of call %s not recorded: %s", self.info["call_id"], exc)
            return
        if recorded is not None:
            await publish_usage(get_channel_layer(), self.info["session_id"], recorded)

    # ---- the document-search tool ----

    async def response_created(self, response):
        await self.police_response(response)
        if isinstance(response.get("id"), str):
            self.active.add(response["id"])
            marker = (response.get("metadata") or {}).get("tool_calls")
            if self.creating is not None and marker == self.creating[0]:
                self.answer_for[response["id"]] = self.creating[1]
                self.creating = None

    async def resume_answers(self):
        """On each attach: the events missed while the sideband was away would have ended the responses
        seen running and started the one asked for, so those are forgotten; a batch whose response was never
        seen done gets its outputs now and its answer asked for, with the answers still owed. A response
        running since the reattach (never seen here) refuses the ask: asked again when it ends (upstream_error)."""
        self.active.clear()
        self.creating = None
        self.answer_for.clear()
        # Each batch is let go of once all of it was sent: a drop in the middle leaves it for the next attach.
        for response_id, batch in list(self.outputs.items()):
            await self.send_outputs(batch)
            del self.outputs[response_id]
            self.owed.append([pk for _, _, pk in batch if pk is not None])
        await self.ask_for_answer()

    async def tool_call(self, event):
        """Answer a function call from the conversation's documents; the output goes in when its response ends."""
        call_id, name = event.get("call_id"), event.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str) or len(call_id) > 128:
            return
        response_id = event.get("response_id") if isinstance(event.get("response_id"), str) else ""
        answered = await self.retry_db(
            tools.answer, self.info["session_id"], call_id, name, event.get("arguments"), response_id,
            call=self.info["call"],
        )
        if answered is None:
            output, pk = "The documents cannot be searched right now. Tell the user and offer to try again.", None
        else:
            output, pk = answered.output, answered.tool_call.pk
        self.outputs.setdefault(response_id, []).append((call_id, output, pk))

    async def response_done(self, response):
        response_id = response.get("id")
        if response_id in self.unbounded:
            await self.police_output(response)
        self.active.discard(response_id)
        for_tools = self.answer_for.pop(response_id, None) or []
        spoken = [i.get("id") for i in response.get("output") or []
                  if isinstance(i, dict) and i.get("type") == "message" and i.get("role") == "assistant"]
        batch = self.outputs.get(response_id, [])
        await self.send_outputs(batch)  # a drop here keeps the batch for the next attach (resume_answers)
        self.outputs.pop(response_id, None)
        # One response.create for the whole batch, and none for a response the user cut short. A response
        # asked to answer one batch that searched again instead of speaking: the answer is for both.
        if batch and response.get("status") == "completed":
            self.owed.append(([] if spoken else for_tools) + [pk for _, _, pk in batch if pk is not None])
        if spoken and isinstance(response_id, str):
            sources = await self.retry_db(self.mark_answer, response_id, spoken[0], for_tools)
            if sources:
                await tell_page(self.info["session_id"], {"type": "answer.sources", "item_id": spoken[0], "sources": sources})
        await self.ask_for_answer()

    async def send_outputs(self, batch):
        for call_id, output, _ in batch:
            item = {"type": "function_call_output", "call_id": call_id, "output": output}
            await self.ws.send_str(json.dumps({"type": "conversation.item.create", "item": item}))

    async def ask_for_answer(self):
        """Send the next owed response.create, never while a response is running."""
        if self.active or self.creating is not None or not self.owed or self.ws is None:
            return
        pks = self.owed[0]
        self.asked += 1
        # Numbered, so that it is never empty (a batch whose every answer failed kept no tool call) and
        # its echo in response.created always clears it.
        marker = f"{self.asked}:{','.join(str(pk) for pk in pks)}"[:500]
        await self.ws.send_str(json.dumps({
            "type": "response.create", "event_id": f"answer-{marker}",
            "response": {"metadata": {"tool_calls": marker}},
        }))
        # Sent: a drop under the send keeps the ask owed, for the next attach.
        self.owed.pop(0)
        self.creating = (marker, pks)

    def mark_answer(self, response_id, item_id, tool_call_pks):
        """The spoken item of a response: its cost is the response's; its sources, those of the tool
        calls it followed (returned, for the page)."""
        TranscriptEntry.objects.filter(session_id=self.info["session_id"], item_id=item_id).update(
            response_id=response_id)
        if not tool_call_pks:
            return []
        ToolCall.objects.filter(pk__in=tool_call_pks, session_id=self.info["session_id"]).update(
            answer_response_id=response_id, answer_item_id=item_id)
        return [s.as_json() for s in Source.objects.filter(tool_call_id__in=tool_call_pks).order_by(
            "tool_call__created_at", "position")]

    # ---- policing ----

    async def police_session(self, session):
        if not isinstance(session, dict):
            return
        minted = self.info["config"]
        changed = {
            field: session.get(field) for field in context.POLICED_FIELDS
            if field in minted and field in session and _policed(field, session.get(field)) != _policed(field, minted[field])
        }
        # The input transcription's model: the server prices each transcription by the model it set, so a
        # page that switched it (to a dearer one, or to one priced per minute) would be billed wrongly; one
        # that switched it off loses the user's side of the transcript. The upstream may name the model
        # by its snapshot (gpt-4o-mini-transcribe-2025-12-15): that is the same model.
        set_ = _transcription(minted)
        heard = _audio_input(session)
        if set_ is not None and heard is not None and "transcription" in heard:
            seen = heard["transcription"]
            if not isinstance(seen, dict) or _model_family(seen.get("model")) != _model_family(set_.get("model")):
                changed["transcription"] = seen
        if not changed:
            return
        repeat = await self.retry_db(self.log_event, SessionEvent.TAMPERED, {"fields": _shorten(changed)})
        if repeat:
            await self.tampering()
            return
        restore = {"type": "realtime", **{field: minted[field] for field in context.POLICED_FIELDS if field in minted}}
        if set_ is not None:
            restore["audio"] = {"input": {"transcription": set_}}
        await self.ws.send_str(json.dumps({"type": "session.update", "session": restore}))
        await self.retry_db(self.log_event, SessionEvent.RESTORED, {"fields": sorted(restore)})

    async def police_response(self, response):
        if not isinstance(response, dict):
            return
        limit = self.info["config"].get("max_output_tokens")
        asked = response.get("max_output_tokens")
        if limit is None or asked is None or asked == limit or (isinstance(asked, int) and asked <= limit):
            return
        if asked == "inf":
            # "inf" is also how the upstream may show a response that set no limit of its own (the session's
            # then holds): such a response is judged by what it spoke, when it is done.
            self.unbounded.add(response.get("id"))
            return
        await self.ws.send_str(json.dumps({"type": "response.cancel", "response_id": response.get("id")}))
        repeat = await self.retry_db(
            self.log_event, SessionEvent.RESPONSE_CANCELLED, {"max_output_tokens": asked, "limit": limit}
        )
        if repeat:
            await self.tampering()

    async def police_output(self, response):
        """A response that said it had no limit, and spoke more than the session's: the page asked for it."""
        self.unbounded.discard(response.get("id"))
        limit = self.info["config"].get("max_output_tokens")
        spoken = (response.get("usage") or {}).get("output_tokens")
        if not isinstance(spoken, int) or not isinstance(limit, int) or spoken <= limit:
            return
        repeat = await self.retry_db(
            self.log_event, SessionEvent.TAMPERED, {"fields": {"max_output_tokens": "inf"}, "output_tokens": spoken,
                                                   "limit": limit})
        if repeat:
            await self.tampering()

    async def tampering(self):
        """A page that keeps changing what the server set loses the call."""
        await self.retry_db(self.log_event, SessionEvent.HUNG_UP, {"reason": EndReason.TAMPERING})
        session = await self.retry_db(RealtimeSession.objects.get, pk=self.info["session_id"])
        calls = await self.retry_db(session.end, EndReason.TAMPERING)
        await hang_up(calls or {self.info["call_id"]: self.info["sealed_secret"]}, "tampering")
        # The conversation ended, not only this call: the page stops and says why, the dashboards hear it.
        await tell_page(self.info["session_id"], {"type": "call.ended", "call": None, "reason": EndReason.TAMPERING})
        await announce_ended(get_channel_layer(), [self.info["session_id"]])

    def log_event(self, kind, detail):
        """Keep what happened for admins; True if the page had already been caught changing the session."""
        earlier = SessionEvent.objects.filter(
            session_id=self.info["session_id"], kind__in=(SessionEvent.TAMPERED, SessionEvent.RESPONSE_CANCELLED)
        ).exists()
        SessionEvent.objects.create(session_id=self.info["session_id"], call_id=self.pk, kind=kind, detail=detail)
        return earlier and kind in (SessionEvent.TAMPERED, SessionEvent.RESPONSE_CANCELLED)

    # ---- the record ----

    async def retry_db(self, func, *args, **kwargs):
        """ORM work on a thread, retried through a database hiccup; None if it keeps failing."""
        return await retry_db(_db(func), f"call {self.pk}", *args, **kwargs)

    def load(self):
        call = _call_to_watch.first(pk=self.pk)
        if call is None:
            return None
        if call.sideband_attached_at:  # a reattach: the turns placed so far come first
            last = TranscriptEntry.objects.filter(session_id=call.session_id, call_number=call.number)
            self.position = last.aggregate(p=Max("position"))["p"] or 0
        return self.describe(call)

    @staticmethod
    def describe(call):
        return {
            "call": call, "call_id": call.call_id, "number": call.number, "status": call.status,
            "end_reason": call.end_reason, "ended_at": call.ended_at, "session_id": call.session_id,
            "sealed_secret": call.sealed_secret, "sideband_credential": call.sideband_credential,
            "sideband_attached_at": call.sideband_attached_at, "context_ready_at": call.context_ready_at,
            "config": call.session.session_config,
        }

    def ended_on_record(self):
        """(end reason, ended at) if the call's record says it ended, else None."""
        row = Call.objects.filter(pk=self.pk).values_list("status", "end_reason", "ended_at").first()
        return None if row is None or row[0] != Call.ENDED else row[1:]

    def attached(self, credential):
        """Record the attach; returns the context still to put into the call (documents, earlier turns).
        With none, the call is marked ready in the same update: one trip to the database per attach."""
        now = timezone.now()
        first = self.info["sideband_attached_at"] or now
        fields = {"sideband_credential": credential, "sideband_attached_at": first}
        events = [] if self.info["context_ready_at"] else self.context_events()
        if not events and not self.info["context_ready_at"]:
            fields["context_ready_at"] = now
        _update_call(self.pk, **fields)
        self.info["sideband_credential"] = credential
        self.info["sideband_attached_at"] = first
        return events

    def mark(self, **fields):
        _update_call(self.pk, **fields)

    def end_call(self, reason):
        """The upstream says the call is gone. The conversation goes on: the page may resume it."""
        Call.objects.get(pk=self.pk).end(reason)


def _policed(field, value):
    """What counts of a policed value: of a tool, what the model sees (the upstream may add defaults)."""
    if field == "tools" and isinstance(value, list):
        return [(t.get("type"), t.get("name"), t.get("description"), t.get("parameters"))
                if isinstance(t, dict) else t for t in value]
    return value


def _model_family(name):
    """A model's name without its snapshot date: the upstream may echo an alias as its snapshot."""
    return re.sub(r"-\d{4}-\d{2}-\d{2}$", "", name) if isinstance(name, str) else name


def _audio_input(session):
    """A session's `audio.input` settings (a dict), or None if it says none."""
    audio = session.get("audio")
    value = audio.get("input") if isinstance(audio, dict) else None
    return value if isinstance(value, dict) else None


def _transcription(session):
    """A session's input transcription settings (a dict), or None if it says none."""
    value = (_audio_input(session) or {}).get("transcription")
    return value if isinstance(value, dict) else None


def _shorten(values, limit=500):
    """What a page set, small enough to keep: long strings cut."""
    text = json.dumps(values)
    return values if len(text) <= limit else {"excerpt": text[:limit]}


async def supervise(stop, **options):
    """Keep a sideband worker running until `stop`: one that fails unexpectedly is logged and started again."""
    while not stop.is_set():
        try:
            await SidebandWorker(**options).run(stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the sideband worker failed; starting it again")
            await asyncio.sleep(1)


class InProcessWorker:
    """ASGI wrapper for one machine: the server's own event loop runs the sideband worker.

    Started by the first connection (daphne has no startup hook); the in-memory
    channel layer then reaches every page from it.
    """

    def __init__(self, app):
        self.app = app
        self.task = None

    async def __call__(self, scope, receive, send):
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                supervise(asyncio.Event(), take_over=True, local=True))
        return await self.app(scope, receive, send)
