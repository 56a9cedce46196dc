"""Starting a call: POST /api/sessions/ at 1 and 32 concurrent signed-in clients.

Each start is two upstream requests (mint the secret, create the call with the
browser's SDP offer), and the simulator answers each after a fixed delay, so the
upstream-bound limit is CLIENTS / (2 x delay). One daphne process on SQLite
runs the sideband worker too, so its CPU per start includes attaching the
sideband to the new call. The offer is a real one (aiortc), reused for every
start; the simulator is reset between levels so its peers do not pile up.
"""

import asyncio
import json
import time
import urllib.request

from realtime_sim.tests.rtc_client import RtcClient

from .harness import cpu_seconds, percentile, post_json, service, signed_in_client, simulator

UPSTREAM_DELAY_MS = 50
CLIENTS = 32


async def make_offer():
    client = RtcClient()
    try:
        return await client.offer()
    finally:
        await client.close()


async def start_loop(client, offer, count, latencies):
    for _ in range(count):
        began = time.perf_counter()
        response = await client.post("/api/sessions/", json={"model": "gpt-realtime-mini", "sdp": offer})
        latencies.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 201, (response.status_code, response.text)


async def run_level(clients, offer, per_client):
    latencies = []
    began = time.perf_counter()
    await asyncio.gather(*(start_loop(c, offer, per_client, latencies) for c in clients))
    return latencies, len(latencies) / (time.perf_counter() - began)


def attach_delays(sim):
    """Per call: ms from its creation to its first sideband attach, at the simulator."""
    with urllib.request.urlopen(f"{sim}/_sim/calls", timeout=10) as response:
        calls = json.loads(response.read())
    return [c["sideband_attaches"][0]["at_ms"] - c["created_at_ms"] for c in calls if c["sideband_attaches"]]


async def measure(sim, top):
    base, pid = top.bases[0], top.servers[0].pid
    offer = await make_offer()
    clients = [await signed_in_client(base, f"bench{i}") for i in range(CLIENTS)]
    await run_level(clients[:4], offer, 3)  # warm-up: connections, caches, tokenizer
    results = {}
    for level, per_client in ((1, 100), (CLIENTS, 10)):
        await asyncio.sleep(2)  # let the worker attach to the warm-up's calls
        post_json(f"{sim}/_sim/reset", {})
        for endpoint in ("client_secrets", "calls"):
            post_json(f"{sim}/_sim/faults", {"endpoint": endpoint, "latency_ms": UPSTREAM_DELAY_MS})
        cpu_before = cpu_seconds(pid)
        latencies, throughput = await run_level(clients[:level], offer, per_client)
        await asyncio.sleep(1.5)  # the sideband attaches belong to these starts' cost
        cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / len(latencies)
        results[level] = (latencies, throughput, cpu_ms, attach_delays(sim))
    for c in clients:
        await c.aclose()
    post_json(f"{sim}/_sim/reset", {})
    return results


def main():
    with simulator() as sim, service(sim, CLIENTS) as top:
        results = asyncio.run(measure(sim, top))
    limit = CLIENTS * 1000 / (2 * UPSTREAM_DELAY_MS)
    print(f"start a call: POST /api/sessions/ (mint + create the call) against the simulator, "
          f"{UPSTREAM_DELAY_MS} ms per upstream request")
    print("| clients | starts | starts/s | latency p50 | latency p99 | server overhead p50 | server CPU per start "
          "| sideband attach p50 | sideband attach p99 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for level, (lat, tput, cpu_ms, attach) in results.items():
        p50 = percentile(lat, 50)
        print(f"| {level} | {len(lat)} | {tput:.1f} | {p50:.1f} ms | {percentile(lat, 99):.1f} ms | "
              f"{p50 - 2 * UPSTREAM_DELAY_MS:.1f} ms | {cpu_ms:.1f} ms | {percentile(attach, 50):.0f} ms | "
              f"{percentile(attach, 99):.0f} ms |")
    ratio = results[CLIENTS][1] / results[1][1]
    print(f"throughput c={CLIENTS} / c=1: {ratio:.1f}x; c={CLIENTS} reaches "
          f"{results[CLIENTS][1] / limit:.0%} of the upstream-bound {limit:.0f} starts/s")
