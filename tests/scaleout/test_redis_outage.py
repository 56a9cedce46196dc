"""Redis stopped under a running two-process service: pages, reads, usage and starting calls go on from the
database; sockets stay up; /healthz says what is missing; and when Redis is back, live pushes resume without
a restart. Plus a burst of sockets far larger than the channel layer's pool. The Redis here is this test's
own, on its own port, so stopping it disturbs nothing else on the machine."""

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request

import aiohttp
import pytest
import redis

from bench.harness import free_port, signed_in_client, simulator, topology
from tests.scaleout.test_two_processes import USAGE, receive, socket, start

pytestmark = pytest.mark.scaleout


class OwnRedis:
    def __init__(self, folder):
        assert shutil.which("redis-server"), "redis-server is missing (Debian's redis-server package)"
        self.port = free_port()
        self.folder = folder
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                assert time.monotonic() < deadline, "the test's redis-server did not start"
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    own = OwnRedis(tmp_path_factory.mktemp("redis"))
    own.start()
    with simulator() as sim, topology(sim, users=2, processes=2, shared=True, workers=1, redis_url=own.url) as top:
        yield sim, top, own
    own.stop()


def health(base):
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
        return response.status, json.loads(response.read())


async def test_a_redis_outage_degrades_and_recovers_without_a_restart(outage):
    sim, top, own = outage
    a, b = top.bases
    member, staff = await signed_in_client(a, "bench0"), await signed_in_client(b, "benchstaff")
    colleague = await signed_in_client(a, "bench1")  # a second person: one running conversation each
    browser, session = await start(member, {"turn_detection": "push_to_talk"})
    statuses = []
    async with aiohttp.ClientSession() as http:
        usage = await socket(http, a, session["usage_ws"], member)
        dashboard = await socket(http, b, "/ws/dashboard/", staff)
        await usage.send_json({"type": "usage.report", "response_id": "resp_before", "usage": USAGE})
        await receive(usage, "usage.ack")
        assert (await receive(dashboard, "spend.update"))["response_id"] == "resp_before"

        own.stop()
        outage_began = time.monotonic()
        # Pages and reads come from the database.
        for client, base in ((member, a), (staff, b)):
            for path in ("/", "/documents/", "/sessions/", "/api/documents/", f"/api/sessions/{session['id']}"):
                response = await client.get(path)
                statuses.append(response.status_code)
                assert response.status_code == 200, (base, path, response.status_code)
        # Usage is still stored: on the socket that was open, and on one opened during the outage.
        await usage.send_json({"type": "usage.report", "response_id": "resp_during", "usage": USAGE})
        assert (await receive(usage, "usage.ack"))["response_id"] == "resp_during"
        late = await socket(http, b, session["usage_ws"], member)
        await late.send_json({"type": "usage.report", "response_id": "resp_during_b", "usage": USAGE})
        assert (await receive(late, "usage.ack"))["response_id"] == "resp_during_b"
        # Starting a call still works: the rate limit falls back to each process's own count.
        second, _ = await start(colleague)
        await second.close()
        status, body = await asyncio.to_thread(health, a)
        assert status == 200 and body["redis"].startswith("error") and body["status"] == "degraded"
        assert body["database"] == "ok"
        elapsed = time.monotonic() - outage_began
        await asyncio.sleep(max(0.0, 5 - elapsed))  # a five-second outage at least

        own.start()  # an empty Redis: every group membership is gone
        deadline = time.monotonic() + 30
        while True:
            status, body = await asyncio.to_thread(health, a)
            if body["redis"] == "ok" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert body["redis"] == "ok"
        # The dashboard missed the reports made during the outage: it is told to read the figures again.
        await receive(dashboard, "dashboard.resync", timeout=30)
        # Live pushes resume: the dashboard on the other process hears a new report.
        deadline = time.monotonic() + 30
        number = 0
        while True:
            number += 1
            await usage.send_json({"type": "usage.report", "response_id": f"resp_after_{number}", "usage": USAGE})
            await receive(usage, "usage.ack")
            try:
                update = await receive(dashboard, "spend.update", timeout=2)
                if update["response_id"].startswith("resp_after"):
                    break
            except asyncio.TimeoutError:
                assert time.monotonic() < deadline, "the dashboard never heard a report after Redis came back"
        for ws in (usage, dashboard, late):
            assert not ws.closed
            await ws.close()
    detail = (await member.get(f"/api/sessions/{session['id']}")).json()
    assert {u["response_id"] for u in detail["usage"]} >= {"resp_before", "resp_during", "resp_during_b"}
    assert all(s < 500 for s in statuses)
    await browser.close()
    await member.aclose()
    await colleague.aclose()
    await staff.aclose()


async def test_a_burst_of_sockets_waits_or_is_refused_never_a_500(outage):
    _, top, _ = outage
    staff = await signed_in_client(top.bases[0], "benchstaff")
    cookie = f"sessionid={staff.cookies['sessionid']}"
    url = top.bases[0].replace("http", "ws", 1) + "/ws/dashboard/"
    results = []

    async def one(http):
        try:
            ws = await http.ws_connect(url, headers={"Cookie": cookie, "Origin": top.bases[0]}, timeout=30)
            results.append(101)
            return ws
        except aiohttp.WSServerHandshakeError as exc:
            results.append(exc.status)
            return None

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        sockets = await asyncio.gather(*(one(http) for _ in range(500)))
        assert len(results) == 500
        assert not [s for s in results if s >= 500], sorted(set(results))
        print(f"500 sockets at once: {results.count(101)} connected, {500 - results.count(101)} refused")
        assert results.count(101) >= 450
        await asyncio.gather(*(ws.close() for ws in sockets if ws is not None))
    await staff.aclose()
