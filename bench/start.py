"""Starting a call, side by side with the tutorial's token server, against one simulator.

This server: POST /api/sessions/ makes two upstream requests (mint the secret, create the call with
the browser's SDP offer), so its upstream-bound limit is CLIENTS / (2 x delay). It runs as one
process on SQLite with the sideband worker inside it, so its CPU per start includes attaching the
sideband to the new call. The offer is a real one (aiortc), reused for every start.

The tutorial (../shared/seed/, Step 1): its Express `server.js` as written, copied into a temporary
folder with express and cors from the npm registry; POST /session makes one upstream request (the
mint), so its limit is CLIENTS / delay. The tutorial hard-codes https://api.openai.com and port 3001
and listens on every interface; a preload of ours (`node --import`), not an edit of its file, sends
its fetch to the simulator and its listen to 127.0.0.1 on a free port. The simulator refuses its
body (`{"model": ...}` is not a GA client_secrets body, as the real API refuses it), so every answer
is its 500 "Failed to create session": the same work, one upstream round trip and a JSON answer.

CPU per start is the server process's user + system CPU time over a level, divided by its starts;
the simulator's and the load generator's (this process: a small HTTP/1.1 client of its own, cheaper
than httpx) are shown too, as the three share this machine's cores. Their sum spread over the cores
is the CPU-bound limit: the starts/s the machine could give at best, whatever the upstream's delay. The
deployed topology's CPU per start is also split between its web processes (the request itself, the part
to set beside Express's) and its sideband worker (attaching to and watching the new call). The share of
the machine's busy CPU time the hypervisor stole during each level's starts is shown: figures taken
while it is high may be higher for every server alike, so compare within one run. Between levels the conversations
started are ended (POST .../end, as a person would) and the simulator is reset, so its peers do not pile
up and no call of an earlier level is still being watched. Figures are noisy on a shared 2-core machine.
"""

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from realtime_sim.tests.rtc_client import RtcClient

from .harness import (ROOT, Http1, cpu_seconds, free_port, machine_ticks, percentile, post_json, service,
                      signed_in_http1, simulator, steal_share, topology)

UPSTREAM_DELAY_MS = 50
CLIENTS = 32
# Starts per level: one client in a row, then CLIENTS side by side.
LEVELS = ((1, 60), (CLIENTS, 10))
SERVERS = ("uvicorn", "daphne")
# The deployment past one machine as the README describes it, on this machine: two uvicorn processes
# and a sideband worker process on PostgreSQL and Redis. Its CPU per start is the three processes'.
SHARED = True
SHARED_NAME = "this server (2 x uvicorn + sideband worker, PostgreSQL + Redis)"
SEED = ROOT.parent / "shared" / "seed"

# Ours, not the tutorial's: where its fetch and its listen go, so it stays on loopback.
TUTORIAL_PRELOAD = """\
import net from 'node:net';
const upstream = process.env.BENCH_UPSTREAM;
const port = Number(process.env.BENCH_PORT);
const fetchUpstream = globalThis.fetch;
globalThis.fetch = (url, init) => fetchUpstream(String(url).replace('https://api.openai.com', upstream), init);
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  return listen.call(this, port, '127.0.0.1', ...args.filter((a) => typeof a === 'function'));
};
"""


async def make_offer():
    client = RtcClient()
    try:
        return await client.offer()
    finally:
        await client.close()


async def start_loop(client, path, body, count, latencies, statuses, started):
    for _ in range(count):
        began = time.perf_counter()
        status, content = await client.post(path, body)
        latencies.append((time.perf_counter() - began) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        if path == "/api/sessions/":
            if status >= 500:
                raise AssertionError((status, content[:300]))
            if status == 201:
                started.append((client, json.loads(content)["id"]))


async def run_level(clients, path, body, per_client, started=None):
    latencies, statuses, started = [], {}, [] if started is None else started
    began = time.perf_counter()
    await asyncio.gather(*(start_loop(c, path, body, per_client, latencies, statuses, started) for c in clients))
    return latencies, len(latencies) / (time.perf_counter() - began), statuses


async def end_conversations(started):
    """End what the last level started, as its people would (End), each on the client that started it."""
    by_client = {}
    for client, session_id in started:
        by_client.setdefault(client, []).append(session_id)

    async def end(client, ids):
        for session_id in ids:
            status, content = await client.post(f"/api/sessions/{session_id}/end", b"{}")
            assert status == 200, (status, content[:300])

    await asyncio.gather(*(end(client, ids) for client, ids in by_client.items()))
    started.clear()


def attach_delays(sim):
    """Per call: ms from its creation to its first sideband attach, at the simulator."""
    with urllib.request.urlopen(f"{sim}/_sim/calls", timeout=10) as response:
        calls = json.loads(response.read())
    return [c["sideband_attaches"][0]["at_ms"] - c["created_at_ms"] for c in calls if c["sideband_attaches"]]


def cpu_of(pids):
    """The CPU seconds these processes have used so far; a process gone meanwhile counts as 0."""
    total = {}
    for pid in pids:
        try:
            total[pid] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def spent(before, after):
    """CPU seconds used between two readings, by the processes alive at both."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


def database_pids():
    """PostgreSQL's and Redis's processes on this machine (a shared topology's database work)."""
    found = []
    for name in ("postgres", "redis-server"):
        result = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
        found += [int(pid) for pid in result.stdout.split()]
    return found


async def measure(sim, sim_pid, pids, clients, path, body, settle, shared=False, web_pids=None):
    """Each level's figures: latencies, starts/s, answers by status, CPU ms per start (the server's
    processes together, the simulator, the load generator, and with `shared` PostgreSQL and Redis;
    `web_pids`, the web processes of the server's, are also counted apart from its sideband workers),
    and the share of the machine's busy CPU time the hypervisor stole while the level's starts ran."""
    web_pids = pids if web_pids is None else web_pids
    started = []
    await run_level(clients[:4], path, body, 3, started)  # warm-up: connections, caches, tokenizer
    results = {}
    for level, per_client in LEVELS:
        # The warm-up's (or last level's) conversations are ended and their sidebands let go before this
        # level: left running, they would vanish at the reset and their retries would count against it.
        await end_conversations(started)
        await asyncio.sleep(settle)
        post_json(f"{sim}/_sim/reset", {})
        for endpoint in ("client_secrets", "calls"):
            post_json(f"{sim}/_sim/faults", {"endpoint": endpoint, "latency_ms": UPSTREAM_DELAY_MS})
        db_pids = database_pids() if shared else []
        cpu_before, sim_before, load_before, db_before = cpu_of(pids), cpu_seconds(sim_pid), cpu_seconds(os.getpid()), cpu_of(db_pids)
        ticks_before = machine_ticks()
        latencies, throughput, statuses = await run_level(clients[:level], path, body, per_client, started)
        steal = steal_share(ticks_before, machine_ticks())
        load_ms = (cpu_seconds(os.getpid()) - load_before) * 1000 / len(latencies)
        await asyncio.sleep(settle)  # the sideband attaches belong to these starts' cost
        cpu_after = cpu_of(pids)
        cpu_ms = spent(cpu_before, cpu_after) * 1000 / len(latencies)
        web_ms = spent({p: cpu_before[p] for p in web_pids if p in cpu_before}, cpu_after) * 1000 / len(latencies)
        sim_ms = (cpu_seconds(sim_pid) - sim_before) * 1000 / len(latencies)
        db_ms = spent(db_before, cpu_of(db_pids)) * 1000 / len(latencies)
        results[level] = {"latencies": latencies, "throughput": throughput, "statuses": statuses, "cpu_ms": cpu_ms,
                          "web_ms": web_ms, "sim_ms": sim_ms, "load_ms": load_ms, "db_ms": db_ms,
                          "attach": attach_delays(sim), "steal": steal}
    await end_conversations(started)
    for c in clients:
        await c.close()
    post_json(f"{sim}/_sim/reset", {})
    return results


async def measure_ours(sim, sim_pid, top, shared=False):
    offer = await make_offer()
    # The clients take turns between the server processes, as a load balancer would spread them.
    clients = [await signed_in_http1(top.bases[i % len(top.bases)], f"bench{i}") for i in range(CLIENTS)]
    body = json.dumps({"model": "gpt-realtime-mini", "sdp": offer}).encode()
    pids = [proc.pid for proc in top.servers + top.workers]
    # settle: the sideband workers see an ended conversation at their next lease renewal (every 2 s).
    return await measure(sim, sim_pid, pids, clients, "/api/sessions/", body, settle=3, shared=shared,
                         web_pids=[proc.pid for proc in top.servers])


async def measure_bare(top):
    """The ASGI server's own cost: a request Django answers at once (404 JSON, no session, no database)."""
    clients = [Http1(top.bases[0]) for _ in range(CLIENTS)]
    await run_level(clients, "/api/nothing", b"{}", 5)
    pid = top.servers[0].pid
    cpu_before = cpu_seconds(pid)
    latencies, throughput, _ = await run_level(clients, "/api/nothing", b"{}", 60)
    for c in clients:
        await c.close()
    return throughput, (cpu_seconds(pid) - cpu_before) * 1000 / len(latencies)


def tutorial_server_js():
    """The tutorial's server.js, as its Step 1 prints it."""
    for path in sorted(SEED.glob("*")):
        match = re.search(r"^import express from 'express';\n.*?^app\.listen\(.*?^\}\);\n",
                          path.read_text(errors="replace"), re.S | re.M)
        if match:
            return match.group(0)
    raise RuntimeError(f"no Express server.js in the tutorial under {SEED}")


async def measure_tutorial(sim, sim_pid):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "server.js").write_text(tutorial_server_js())
        (folder / "package.json").write_text(json.dumps({"private": True, "type": "module"}))
        (folder / "bench-preload.mjs").write_text(TUTORIAL_PRELOAD)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "express", "cors"],
                       cwd=folder, check=True, stdout=subprocess.DEVNULL, timeout=300)
        port = free_port()
        env = {**os.environ, "OPENAI_API_KEY": "sk-sim-bench", "BENCH_UPSTREAM": sim, "BENCH_PORT": str(port)}
        node = subprocess.Popen(["node", "--import", "./bench-preload.mjs", "server.js"], cwd=folder, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(_wait_for_port, port, node)
            clients = [Http1(base) for _ in range(CLIENTS)]
            return await measure(sim, sim_pid, [node.pid], clients, "/session", b"{}", settle=0.3)
        finally:
            node.terminate()
            node.wait(10)


def _wait_for_port(port, proc, timeout=30):
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the tutorial's server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("the tutorial's server did not listen")


def machine_bound(r):
    """The starts/s this machine's cores could give if they did nothing but this level's work: the CPU a
    start cost the server, the simulator and the load generator together, spread over every core."""
    return (os.cpu_count() or 1) * 1000 / (r["cpu_ms"] + r["sim_ms"] + r["load_ms"] + r["db_ms"])


def _row(name, upstream_requests, level, r):
    limit = level * 1000 / (upstream_requests * UPSTREAM_DELAY_MS)
    lat = r["latencies"]
    answers = ", ".join(f"{n}x{status}" for status, n in sorted(r["statuses"].items()))
    print(f"| {name} | {level} | {len(lat)} | {r['throughput']:.1f} | {r['throughput'] / limit:.0%} of {limit:.0f} | "
          f"{percentile(lat, 50):.1f} ms | {percentile(lat, 95):.1f} ms | {r['cpu_ms']:.2f} ms | "
          f"{r['sim_ms']:.2f} ms | {r['load_ms']:.2f} ms | {r['db_ms']:.2f} ms | {machine_bound(r):.0f} | "
          f"{r['steal']:.1%} | {answers} |")


def main():
    results, bare = {}, {}
    with simulator() as sim:
        port = sim.rsplit(":", 1)[1]
        sim_pid = int(subprocess.check_output(["pgrep", "-P", str(os.getpid()), "-f", f"realtime_sim .*--port {port}"]).split()[0])
        for server in SERVERS:
            with service(sim, CLIENTS, server=server) as top:
                results[f"this server ({server})"] = asyncio.run(measure_ours(sim, sim_pid, top))
                bare[server] = asyncio.run(measure_bare(top))
        if SHARED:
            with topology(sim, CLIENTS, processes=2, shared=True, workers=1) as top:
                results[SHARED_NAME] = asyncio.run(measure_ours(sim, sim_pid, top, shared=True))
        if shutil.which("node") and shutil.which("npm"):
            try:
                results["tutorial (Express)"] = asyncio.run(measure_tutorial(sim, sim_pid))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"the tutorial's server could not be measured: {exc}")
        else:
            print("the tutorial's server is not measured: node and npm are not installed")
    print(f"start a call against the simulator, {UPSTREAM_DELAY_MS} ms per upstream request: this server "
          f"(POST /api/sessions/: mint + create the call, sideband attach included) beside the tutorial's "
          f"Express token server (POST /session: the mint only)")
    print(f"| server | clients | starts | starts/s | upstream-bound limit | latency p50 | latency p95 "
          f"| server CPU per start | simulator CPU per start | load generator CPU per start "
          f"| PostgreSQL + Redis CPU per start | CPU-bound limit on {os.cpu_count()} cores | machine CPU stolen | answers |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, levels in results.items():
        for level, r in levels.items():
            _row(name, 1 if name.startswith("tutorial") else 2, level, r)
    express = results.get("tutorial (Express)")
    for name, levels in results.items():
        if name.startswith("this server"):
            attach = levels[CLIENTS]["attach"]
            line = (f"{name}: sideband attach p50 {percentile(attach, 50):.0f} ms, p99 {percentile(attach, 99):.0f} ms "
                    f"at {CLIENTS} clients")
            r = levels[CLIENTS]
            if express:
                ratio = r["cpu_ms"] / express[CLIENTS]["cpu_ms"]
                line += f"; CPU per start {ratio:.1f}x Express's per mint (goal <= 2x)"
            if r["web_ms"] < r["cpu_ms"]:  # the sideband in processes of its own: the request's part apart
                line += f"; of it the web processes {r['web_ms']:.2f} ms"
                if express:
                    line += f" ({r['web_ms'] / express[CLIENTS]['cpu_ms']:.1f}x)"
                line += f" and the sideband worker {r['cpu_ms'] - r['web_ms']:.2f} ms"
            print(line)
    print(f"the ASGI server's own cost, {CLIENTS} clients x 60 requests answered at once (404 JSON): " + "; ".join(
        f"{server} {throughput:.0f}/s, {cpu_ms:.2f} ms CPU per request" for server, (throughput, cpu_ms) in bare.items()))


if __name__ == "__main__":
    main()
