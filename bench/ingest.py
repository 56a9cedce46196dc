"""Usage ingest over WebSockets: two daphne processes on PostgreSQL and Redis.

SESSIONS active gpt-realtime sessions (made in the setup code, so no minting)
each get a usage socket, half on each process, signed in as the session's
owner. One staff dashboard socket listens on the first process, so half the
spend.update messages come from the other process (every one goes through
Redis). Every session socket sends REPORTS usage.reports, the next one as soon
as the previous is acked; DUPLICATE_SOCKETS of them also resend RESENDS
already-acked reports each (2% of all reports), which must be acked as
duplicates, stored once and produce no spend.update. A socket the server
closes is reopened and its unacked report sent again, as the page does.

Afterwards the UsageRecord rows are counted in PostgreSQL: they must equal the
distinct reports sent, and the sessions' running totals must agree with them.

The load generator is this one asyncio process, on the same 2 cores as both
servers, PostgreSQL and Redis, so the figures are for the whole machine.
"""

import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import aiohttp

from .harness import percentile, simulator, topology
from .harness import signed_in_client

SESSIONS = 200
REPORTS = 10  # per session socket
OWNERS = 4  # bench0..bench3 own the sessions, round robin
DUPLICATE_SOCKETS = 20  # each resends RESENDS already-acked reports:
RESENDS = 2  # 20 x 2 = 40 resends, 2% of the 2,000 reports
ACK_TIMEOUT = 60
PACE = 2.0  # seconds between one live conversation's reports (an answer every 2 s)
QUIET_AFTER = 5  # seconds without a spend.update before the dashboard is given up on

SETUP = f"""
from django.utils import timezone
from sessions_app.models import RealtimeSession
owners = [U.objects.get(username=f'bench{{i}}') for i in range({OWNERS})]
rows = RealtimeSession.objects.bulk_create([
    RealtimeSession(user=owners[i % {OWNERS}], team=t, model='gpt-realtime', voice='marin',
                    turn_detection='server_vad', status='active',
                    connected_at=timezone.now(), instructions='Benchmark session.')
    for i in range({SESSIONS})
])
open('SESSIONS_PATH', 'w').write('\\n'.join(f'{{s.pk}} {{s.user.username}}' for s in rows))
"""


def usage_object(rng):
    """A valid response.done usage: totals equal their details, within gpt-realtime's limits."""
    text_in, audio_in = rng.randint(50, 6000), rng.randint(0, 20000)
    cached_text = rng.randint(0, text_in)
    text_out, audio_out = rng.randint(5, 600), rng.randint(0, 3400)
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_tokens": text_in + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0, "cached_tokens": cached_text,
            "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


class Stats:
    def __init__(self):
        self.sent_at = {}  # response_id -> monotonic time of its first send
        self.origin = {}  # response_id -> index of the process its socket is on
        self.acked = set()  # distinct response_ids acked
        self.ack_ms = []
        self.acks = 0
        self.resends = 0
        self.duplicate_acks = 0  # acks of the deliberate resends
        self.wrong_duplicate_flags = 0
        self.closed_by_server = []  # close codes (or errors) of session sockets the server closed
        self.retry_acks = 0  # unacked reports sent again on a reopened socket
        self.errors = []
        self.totals_mismatch = 0
        self.updates = {}  # response_id -> monotonic receive time of its first spend.update
        self.repeat_updates = 0
        self.unknown_updates = 0
        self.last_update = 0.0
        self.dashboard_closes = []
        self.acked_by_socket = {}
        self.resent_after_reopen = set()  # response_ids sent again on a reopened socket


async def connect(http, base, path, cookie):
    return await http.ws_connect(base.replace("http", "ws", 1) + path,
                                 headers={"Cookie": f"sessionid={cookie}", "Origin": base}, heartbeat=None)


async def next_frame(ws, timeout):
    message = await asyncio.wait_for(ws.receive(), timeout)
    if message.type != aiohttp.WSMsgType.TEXT:
        raise ConnectionResetError(message.data if message.type == aiohttp.WSMsgType.CLOSE else message.type.name)
    return json.loads(message.data)


class Page:
    """One session's usage socket, reopened (like the page) when the server closes it."""

    def __init__(self, ws, reopen, stats):
        self.ws, self.reopen, self.stats = ws, reopen, stats

    async def report(self, response_id, usage, resend=False):
        """Send a usage.report until it is acked; returns the ack, or None after an error frame."""
        frame = json.dumps({"type": "usage.report", "response_id": response_id, "usage": usage})
        retry = False
        while True:
            start = time.monotonic()
            self.stats.sent_at.setdefault(response_id, start)
            try:
                await self.ws.send_str(frame)
                while True:
                    message = await next_frame(self.ws, ACK_TIMEOUT)
                    if message.get("type") == "usage.ack" and message.get("response_id") == response_id:
                        break
                    if message.get("type") == "error":
                        self.stats.errors.append(message)
                        return None
            except (ConnectionError, aiohttp.ClientError) as exc:
                # A close frame's code, or how the connection broke.
                code = exc.args[0] if isinstance(exc, ConnectionResetError) and exc.args else None
                self.stats.closed_by_server.append(code or type(exc).__name__)
                self.ws = await self.reopen()
                retry = True
                self.stats.resent_after_reopen.add(response_id)
                continue
            break
        stats = self.stats
        stats.ack_ms.append((time.monotonic() - start) * 1000)
        stats.acks += 1
        stats.acked.add(response_id)
        if resend:
            stats.duplicate_acks += message["duplicate"]
        if retry:
            stats.retry_acks += 1
        elif message["duplicate"] != resend:
            stats.wrong_duplicate_flags += 1
        return message


async def session_socket(page, index, process, stats, pace=0.0, tag="a", before=0):
    """REPORTS reports, each sent on the previous one's ack (pace 0), or one every `pace` seconds from a
    random moment in the first interval, as live conversations report their answers."""
    rng = random.Random(f"{tag}{index}")
    acked = []  # (response_id, usage, cost)
    resend_after = set(rng.sample(range(2, REPORTS), RESENDS)) if index < DUPLICATE_SOCKETS else set()
    last = None
    began = time.monotonic() + rng.uniform(0, pace)
    for n in range(REPORTS):
        if pace:
            await asyncio.sleep(max(0.0, began + n * pace - time.monotonic()))
        response_id = f"resp_{tag}{index:03d}_{n:03d}"
        stats.origin[response_id] = process
        usage = usage_object(rng)
        ack = await page.report(response_id, usage)
        if ack is None:
            continue
        acked.append((response_id, usage, ack["cost_usd"]))
        last = ack
        if n in resend_after:
            old_id, old_usage, old_cost = rng.choice(acked[:-1])
            stats.resends += 1
            last = await page.report(old_id, old_usage, resend=True) or last
            if last["cost_usd"] != old_cost and last["response_id"] == old_id:
                stats.errors.append({"code": "cost_changed_on_resend", "response_id": old_id})
    # The session's running totals in its last ack count each of its reports once.
    if last is not None and last["session"]["responses"] != before + len(acked):
        stats.totals_mismatch += 1
    stats.acked_by_socket[index] = len(acked)
    await page.ws.close()


async def dashboard_reader(ws, reopen, stats, done):
    while True:
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            if done.is_set():
                return
            stats.dashboard_closes.append(message.data)
            ws = await reopen()
            continue
        now = time.monotonic()
        data = json.loads(message.data)
        if data.get("type") != "spend.update":
            continue
        response_id = data.get("response_id")
        stats.last_update = now
        if response_id not in stats.sent_at:
            stats.unknown_updates += 1
        elif response_id in stats.updates:
            stats.repeat_updates += 1
        else:
            stats.updates[response_id] = now


async def measure(bases, sessions, pace=0.0, tag="a", before=None):
    cookies = {}
    for username in sorted({owner for _, owner in sessions}) + ["benchstaff"]:
        client = await signed_in_client(bases[0], username)
        cookies[username] = client.cookies["sessionid"]
        await client.aclose()
    stats = Stats()
    done = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        def opener(base, path, cookie):
            return lambda: connect(http, base, path, cookie)

        open_dashboard = opener(bases[0], "/ws/dashboard/", cookies["benchstaff"])
        dashboard = await open_dashboard()
        reader = asyncio.create_task(dashboard_reader(dashboard, open_dashboard, stats, done))
        placed = [(i, i % len(bases), opener(bases[i % len(bases)], f"/ws/sessions/{sid}/", cookies[owner]))
                  for i, (sid, owner) in enumerate(sessions)]
        start = time.monotonic()
        sockets = await asyncio.gather(*(reopen() for _, _, reopen in placed))
        connect_s = time.monotonic() - start
        await asyncio.sleep(1)  # let the connects' page_connected_at writes drain
        start = time.monotonic()
        results = await asyncio.gather(*(
            session_socket(Page(ws, reopen, stats), i, p, stats, pace, tag, (before or {}).get(i, 0))
            for ws, (i, p, reopen) in zip(sockets, placed)), return_exceptions=True)
        elapsed = time.monotonic() - start
        failures = [r for r in results if isinstance(r, BaseException)]
        stats.last_update = max(stats.last_update, time.monotonic())
        while len(stats.updates) < len(stats.acked) and time.monotonic() - stats.last_update < QUIET_AFTER:
            await asyncio.sleep(0.1)
        drained = time.monotonic() - start
        done.set()
        reader.cancel()
    return stats, connect_s, elapsed, drained, failures


def stored(database_url, session_ids):
    import psycopg

    with psycopg.connect(database_url) as db:
        records, distinct, record_cost = db.execute(
            "SELECT count(*), count(DISTINCT (session_id, response_id, source)), coalesce(sum(cost_usd), 0) "
            "FROM sessions_app_usagerecord WHERE session_id = ANY(%s::uuid[])", [session_ids]).fetchone()
        responses, session_cost = db.execute(
            "SELECT coalesce(sum(response_count), 0), coalesce(sum(cost_usd), 0) "
            "FROM sessions_app_realtimesession WHERE id = ANY(%s::uuid[])", [session_ids]).fetchone()
    return records, distinct, Decimal(record_cost), responses, Decimal(session_cost)


def ms(values, p):
    return f"{percentile(values, p):.0f} ms" if values else "-"


def main():
    with tempfile.TemporaryDirectory() as tmp, simulator() as sim:
        sessions_path = Path(tmp) / "sessions.txt"
        setup = SETUP.replace("SESSIONS_PATH", str(sessions_path))
        with topology(sim, OWNERS, processes=2, shared=True, setup=setup) as top:
            sessions = [tuple(line.split()) for line in sessions_path.read_text().splitlines()]
            flat_out = asyncio.run(measure(top.bases, sessions, tag="a"))
            paced = asyncio.run(measure(top.bases, sessions, pace=PACE, tag="b", before=flat_out[0].acked_by_socket))
            records, distinct_rows, record_cost, responses, session_cost = stored(
                top.env["DATABASE_URL"], [sid for sid, _ in sessions])

    print(f"ingest: {SESSIONS} usage WebSockets, half on each of 2 server processes (PostgreSQL + Redis), "
          f"{REPORTS} reports each; 1 staff dashboard socket on process 1 (half the updates cross processes "
          f"through Redis); one asyncio load generator; all on the same 2 cores. Flat out: each socket sends "
          f"its next report on the previous one's ack. Live: each socket reports every {PACE:g} s "
          f"({SESSIONS / PACE:.0f} reports/s offered), as {SESSIONS} conversations answering that often would")
    print("| load | reports acked | acks/s | ack p50 | ack p99 | to dashboard p50 | to dashboard p99 "
          "| same process p50 | other process p50 | missed on the dashboard |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    distinct = 0
    for name, (stats, connect_s, elapsed, drained, failures) in (("flat out", flat_out), ("live", paced)):
        distinct += len(stats.sent_at)
        to_dashboard = [(stats.updates[r] - stats.sent_at[r]) * 1000 for r in stats.updates]
        same = [(stats.updates[r] - stats.sent_at[r]) * 1000 for r in stats.updates if stats.origin[r] == 0]
        other = [(stats.updates[r] - stats.sent_at[r]) * 1000 for r in stats.updates if stats.origin[r] == 1]
        print(f"| {name} | {stats.acks:,} | {stats.acks / elapsed:.0f} | {ms(stats.ack_ms, 50)} "
              f"| {ms(stats.ack_ms, 99)} | {ms(to_dashboard, 50)} | {ms(to_dashboard, 99)} | {ms(same, 50)} "
              f"| {ms(other, 50)} | {len(stats.sent_at) - len(stats.updates):,} |")
    for name, (stats, connect_s, elapsed, drained, failures) in (("flat out", flat_out), ("live", paced)):
        print(f"{name}: {connect_s:.1f} s to open the sockets, {elapsed:.1f} s sending, {drained:.1f} s until the "
              f"dashboard caught up (or went quiet for {QUIET_AFTER} s); {stats.resends} resends acked as "
              f"duplicates: {stats.duplicate_acks}")
        if stats.closed_by_server or stats.dashboard_closes:
            how = ", ".join(f"{n} x {code}" for code, n in Counter(stats.closed_by_server).items())
            print(f"WARNING: the server closed {len(stats.closed_by_server)} usage sockets ({how or 'none'}) and "
                  f"the dashboard {len(stats.dashboard_closes)} times; reopened, and {stats.retry_acks} unacked "
                  f"reports sent again")
        missed = sorted(set(stats.sent_at) - set(stats.updates))
        if missed:
            by_process = Counter(stats.origin[r] for r in missed)
            print(f"{name}: missed on the dashboard: " + ", ".join(
                f"{n} sent to process {p + 1}" for p, n in sorted(by_process.items())) +
                f"; {len(set(missed) & stats.resent_after_reopen)} of them resent after a reopen; "
                f"first: {', '.join(missed[:5])}")
        if stats.repeat_updates or stats.unknown_updates:
            print(f"WARNING: {stats.repeat_updates} spend.updates repeated, {stats.unknown_updates} for unknown reports")
        for failure in failures[:3]:
            print(f"socket failed: {failure!r}")
        for error in stats.errors[:3]:
            print(f"error frame: {error}")
        assert not failures and not stats.errors, (failures[:3], stats.errors[:3])
        assert len(stats.acked) == len(stats.sent_at), (len(stats.acked), len(stats.sent_at))
        assert stats.duplicate_acks == stats.resends and not stats.wrong_duplicate_flags, stats.wrong_duplicate_flags
        assert not stats.totals_mismatch, stats.totals_mismatch
    print(f"stored: {records:,} usage records for {distinct:,} distinct reports (lost {distinct - records:,}, "
          f"duplicated {records - distinct_rows:,}); the sessions' running totals "
          f"{'equal' if responses == records and session_cost == record_cost else 'DIFFER FROM'} the records")
    assert records == distinct_rows == distinct, (records, distinct_rows, distinct)
    assert responses == records and session_cost == record_cost, (responses, records, session_cost, record_cost)


if __name__ == "__main__":
    main()
