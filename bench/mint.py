"""Mint latency and throughput at 1 and 32 concurrent signed-in clients.

The simulator answers client_secrets after a fixed 50 ms, so the server's own
overhead per mint is the latency minus 50 ms. A view that serialised callers
would show a c=32 / c=1 throughput ratio of about 1.
"""

import asyncio
import re
import time

import httpx

from .harness import PASSWORD, percentile, post_json, service, simulator

UPSTREAM_DELAY_MS = 50
CLIENTS = 32


async def signed_in_client(base, username):
    client = httpx.AsyncClient(base_url=base, timeout=30)
    page = await client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = await client.post("/accounts/login/", data={"username": username, "password": PASSWORD,
                                                           "csrfmiddlewaretoken": token})
    assert response.status_code == 302, response.status_code
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


async def mint_loop(client, count, latencies):
    for _ in range(count):
        start = time.perf_counter()
        response = await client.post("/api/sessions/", json={"model": "gpt-realtime-mini"})
        latencies.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 201, (response.status_code, response.text)


async def run_level(clients, per_client):
    latencies = []
    start = time.perf_counter()
    await asyncio.gather(*(mint_loop(c, per_client, latencies) for c in clients))
    elapsed = time.perf_counter() - start
    return latencies, len(latencies) / elapsed


async def measure(base):
    clients = [await signed_in_client(base, f"bench{i}") for i in range(CLIENTS)]
    await run_level(clients[:4], 3)  # warm-up: connections, caches, tokenizer
    lat1, tput1 = await run_level(clients[:1], 150)
    lat32, tput32 = await run_level(clients, 25)
    for c in clients:
        await c.aclose()
    return {1: (lat1, tput1), CLIENTS: (lat32, tput32)}


def main():
    with simulator() as sim:
        post_json(f"{sim}/_sim/faults", {"endpoint": "client_secrets", "latency_ms": UPSTREAM_DELAY_MS})
        with service(sim, CLIENTS) as base:
            results = asyncio.run(measure(base))
    print(f"mint: POST /api/sessions/ against the simulator with a fixed {UPSTREAM_DELAY_MS} ms upstream delay")
    print("| clients | mints | mints/s | latency p50 | latency p99 | server overhead p50 | server overhead p99 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for level, (lat, tput) in results.items():
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        print(f"| {level} | {len(lat)} | {tput:.1f} | {p50:.1f} ms | {p99:.1f} ms | "
              f"{p50 - UPSTREAM_DELAY_MS:.1f} ms | {p99 - UPSTREAM_DELAY_MS:.1f} ms |")
    ratio = results[CLIENTS][1] / results[1][1]
    print(f"throughput ratio c={CLIENTS} / c=1: {ratio:.1f}x")
    return ratio
