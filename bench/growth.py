"""Cost with history: the same requests with no usage in the month and with a million records.

One daphne process on a fresh PostgreSQL database (and Redis), a user budget
and a team budget in force, so every report and every start checks both. At
each history size, measured one after another from this process:

- a usage report's ack over the page socket (the record, the running totals,
  the day rollups, the budget checks), REPORTS of them in a row;
- a start, POST /api/sessions/ (budget check, mint, create the call), STARTS of
  them, the simulator answering at once;
- the dashboard's JSON for its default 30 days, and its page, as staff.

Measured three times: with an empty month, with 2,000 records (every table and
page of the dashboard full, so the page's rendering is the same as at a million),
and after `manage.py seed_usage` has made it 1,000,000 (GROWTH_RECORDS; its time is
printed too). After each seeding VACUUM ANALYZE runs, as autovacuum would after
such a load, so it does not run during the measuring.

At 2,000 records the lists of conversations are read once more with every
conversation's instructions and minted session object at LARGE_TEXT characters
(a conversation with its inline documents): the dashboard's JSON and page and
the spend CSV, side by side with the same reads with one-line instructions.
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
SMALL = 2_000  # enough history that every table and page of the dashboard is full
REPORTS = 300
STARTS = 40
READS = 15
LARGE_TEXT = 300_000  # characters of instructions: a conversation carrying its inline documents

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


async def list_reads(top):
    staff = await signed_in_client(top.bases[0], "benchstaff")
    result = {"json": await reads(staff, "/dashboard/?format=json"), "page": await reads(staff, "/dashboard/"),
              "csv": await reads(staff, "/dashboard/spend.csv")}
    await staff.aclose()
    return result


def set_instructions(top, text):
    top.sql("UPDATE sessions_app_realtimesession SET instructions = %s, "
            "session_config = jsonb_build_object('type', 'realtime', 'instructions', %s::text)", (text, text))
    top.sql("VACUUM ANALYZE sessions_app_realtimesession")


def main():
    with simulator() as sim, topology(sim, users=4, shared=True, setup=SETUP) as top:
        session_ids = [str(row[0]) for row in top.sql(
            "SELECT id FROM sessions_app_realtimesession WHERE status = 'active' ORDER BY created_at")]

        def seed(records):
            began = time.monotonic()
            top.manage("seed_usage", "--records", str(records), stdout=open(os.devnull, "w"))
            took = time.monotonic() - began
            # What autovacuum would do after such a load, done now so it does not run during the measuring.
            top.sql("VACUUM ANALYZE")
            return took

        results = {"empty": asyncio.run(measure(top, session_ids, "empty"))}
        seed(SMALL)
        results["small"] = asyncio.run(measure(top, session_ids, "small"))
        (conversations,) = top.sql("SELECT count(*) FROM sessions_app_realtimesession")[0]
        lists = {"short": asyncio.run(list_reads(top))}
        set_instructions(top, ("An inline document. " * (LARGE_TEXT // 20 + 1))[:LARGE_TEXT])
        lists["large"] = asyncio.run(list_reads(top))
        set_instructions(top, "Synthetic history.")  # as seed_usage writes them, for the next stage
        seeded = seed(HISTORY - SMALL)
        (records,) = top.sql("SELECT count(*) FROM sessions_app_usagerecord")[0]
        (rollup_rows,) = top.sql("SELECT count(*) FROM sessions_app_spendday")[0]
        results["full"] = asyncio.run(measure(top, session_ids, "full"))

    print(f"growth: one server on PostgreSQL + Redis, a user and a team budget in force; measured with an "
          f"empty month, with {SMALL:,} records (every table and page full) and with {records:,} usage records "
          f"in the month ({rollup_rows:,} day-rollup rows); seed_usage wrote {HISTORY - SMALL:,} records in "
          f"{seeded:.0f} s ({(HISTORY - SMALL) / seeded:,.0f} records/s)")
    print(f"| request | empty p50 / p99 | {SMALL:,} p50 / p99 | {records:,} p50 / p99 | p50 ratio to empty "
          f"| p50 ratio to {SMALL:,} | p99 ratio to {SMALL:,} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    names = {"report": "usage report ack", "start": "start (mint + call)", "json": "dashboard JSON (30 days)",
             "page": "dashboard page"}
    for key, name in names.items():
        cells = {size: (percentile(results[size][key], 50), percentile(results[size][key], 99)) for size in results}
        shown = " | ".join(f"{cells[size][0]:.1f} / {cells[size][1]:.1f} ms" for size in ("empty", "small", "full"))
        print(f"| {name} | {shown} | {cells['full'][0] / cells['empty'][0]:.2f} "
              f"| {cells['full'][0] / cells['small'][0]:.2f} | {cells['full'][1] / cells['small'][1]:.2f} |")
    print(f"lists of conversations at {SMALL:,} records ({conversations:,} conversations), instructions of one line "
          f"and of {LARGE_TEXT:,} characters (each also in the minted session object)")
    print("| request | one line p50 / p99 | large p50 / p99 | p50 ratio |")
    print("| --- | ---: | ---: | ---: |")
    for key, name in (("json", "dashboard JSON (30 days)"), ("page", "dashboard page"), ("csv", "spend CSV")):
        short, large = lists["short"][key], lists["large"][key]
        print(f"| {name} | {percentile(short, 50):.1f} / {percentile(short, 99):.1f} ms | {percentile(large, 50):.1f} / "
              f"{percentile(large, 99):.1f} ms | {percentile(large, 50) / percentile(short, 50):.2f} |")


if __name__ == "__main__":
    main()
