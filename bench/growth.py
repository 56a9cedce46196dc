"""Cost with history: the same requests with no usage in the month and with a million records.

One daphne process on a fresh PostgreSQL database (and Redis), a user budget
and a team budget in force, so every report and every start checks both. At
each history size, measured one after another from this process:

- a usage report's ack over the page socket (the record, the running totals,
  the day rollups, the budget checks), REPORTS of them in a row;
- a start, POST /api/sessions/ (budget check, mint, create the call), STARTS of
  them, the simulator answering at once;
- the dashboard's JSON for its default 30 days, and its page, as staff.

Between the two sizes `manage.py seed_usage --records 1000000` writes the
history (its time is printed too) and PostgreSQL's statistics are refreshed
with ANALYZE, as autovacuum would after such a load.
"""

import asyncio
import json
import os
import time

import aiohttp

from realtime_sim.tests.rtc_client import RtcClient

from .harness import percentile, signed_in_client, simulator, topology
from .ingest import connect, next_frame, usage_object

HISTORY = int(os.environ.get("GROWTH_RECORDS", "1000000"))
REPORTS = 300
STARTS = 40
READS = 15

SETUP = """
from django.utils import timezone
from sessions_app.models import Budget, RealtimeSession
reporter = U.objects.get(username='bench0')
Budget.objects.create(user=reporter, monthly_limit_usd=10**7)
Budget.objects.create(team=t, monthly_limit_usd=10**7)
for i in range(2):
    RealtimeSession.objects.create(user=reporter, team=t, model='gpt-realtime', voice='marin',
                                   turn_detection='server_vad', status='active', connected_at=timezone.now(),
                                   instructions='Growth benchmark.')
"""


async def report_acks(base, cookie, session_id, tag):
    import random

    rng = random.Random(tag)
    times = []
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, base, f"/ws/sessions/{session_id}/", cookie)
        for n in range(REPORTS):
            began = time.perf_counter()
            await ws.send_str(json.dumps({"type": "usage.report", "response_id": f"resp_{tag}_{n}",
                                          "usage": usage_object(rng)}))
            while True:
                message = await next_frame(ws, 30)
                if message.get("type") == "usage.ack":
                    break
                assert message.get("type") != "error", message
            times.append((time.perf_counter() - began) * 1000)
        await ws.close()
    return times[10:]  # the first few warm the connection and the caches


async def starts(client, offer):
    times = []
    for _ in range(STARTS):
        began = time.perf_counter()
        response = await client.post("/api/sessions/", json={"model": "gpt-realtime-mini", "sdp": offer})
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 201, (response.status_code, response.text)
        await client.post(f"/api/sessions/{response.json()['id']}/end")
    return times[3:]


async def reads(client, path):
    times = []
    for _ in range(READS):
        began = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.status_code
    return times[2:]


async def measure(top, session_ids, tag):
    base = top.bases[0]
    reporter = await signed_in_client(base, "bench0")
    staff = await signed_in_client(base, "benchstaff")
    offer_peer = RtcClient()
    offer = await offer_peer.offer()
    await offer_peer.close()
    result = {
        "report": await report_acks(base, reporter.cookies["sessionid"], session_ids[0], tag),
        "start": await starts(reporter, offer),
        "json": await reads(staff, "/dashboard/?format=json"),
        "page": await reads(staff, "/dashboard/"),
    }
    await reporter.aclose()
    await staff.aclose()
    return result


def main():
    with simulator() as sim, topology(sim, users=4, shared=True, setup=SETUP) as top:
        session_ids = [str(row[0]) for row in top.sql(
            "SELECT id FROM sessions_app_realtimesession WHERE status = 'active' ORDER BY created_at")]
        empty = asyncio.run(measure(top, session_ids, "empty"))
        began = time.monotonic()
        top.manage("seed_usage", "--records", str(HISTORY), stdout=open(os.devnull, "w"))
        seeded = time.monotonic() - began
        top.sql("ANALYZE")
        (records,) = top.sql("SELECT count(*) FROM sessions_app_usagerecord")[0]
        (rollup_rows,) = top.sql("SELECT count(*) FROM sessions_app_spendday")[0]
        full = asyncio.run(measure(top, session_ids, "full"))

    print(f"growth: one daphne on PostgreSQL + Redis, a user and a team budget in force; "
          f"{records:,} usage records in the month after seeding ({rollup_rows:,} day-rollup rows; "
          f"seed_usage took {seeded:.0f} s, {HISTORY / seeded:,.0f} records/s)")
    size = f"{records:,}"
    print(f"| request | empty p50 | empty p99 | {size} p50 | {size} p99 | ratio p50 | ratio p99 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    names = {"report": "usage report ack", "start": "start (mint + call)", "json": "dashboard JSON (30 days)",
             "page": "dashboard page"}
    for key, name in names.items():
        e50, e99 = percentile(empty[key], 50), percentile(empty[key], 99)
        f50, f99 = percentile(full[key], 50), percentile(full[key], 99)
        print(f"| {name} | {e50:.1f} ms | {e99:.1f} ms | {f50:.1f} ms | {f99:.1f} ms | {f50 / e50:.2f} "
              f"| {f99 / e99:.2f} |")


if __name__ == "__main__":
    main()
