"""Library search latency with 10,000 documents, through GET /api/documents/?q=."""

import asyncio
import time

from .harness import percentile, service, simulator
from .harness import signed_in_client

DOCUMENTS = 10_000
SETUP = f"""
import random
from documents_app.models import Document
rng = random.Random(7)
words = [w.strip() for w in open('/usr/share/dict/words')] if __import__('os').path.exists('/usr/share/dict/words') else None
if not words:
    syll = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'ti', 'vo', 'ze', 'qu', 'ba', 'do']
    words = sorted({{''.join(rng.choice(syll) for _ in range(rng.randint(2, 4))) for _ in range(20000)}})
docs = []
for i in range({DOCUMENTS}):
    text = ' '.join(rng.choice(words) for _ in range(400))
    docs.append(Document(team=t, owner=U.objects.get(username='bench0'), title=f'Report {{i}} ' + rng.choice(words),
                         filename=f'r{{i}}.txt', kind='text', text=text, sha256=Document.hash_text(text),
                         tokens=600, size_bytes=len(text)))
Document.objects.bulk_create(docs, batch_size=500)
open('QUERIES_PATH', 'w').write('\\n'.join(rng.sample(words, 40)))
"""


async def measure(base, queries):
    client = await signed_in_client(base, "bench0")
    for q in queries[:5]:
        await client.get("/api/documents/", params={"q": q})
    latencies = []
    for q in queries * 5:
        start = time.perf_counter()
        response = await client.get("/api/documents/", params={"q": q})
        latencies.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200
    listings = []
    for _ in range(20):
        start = time.perf_counter()
        await client.get("/api/documents/")
        listings.append((time.perf_counter() - start) * 1000)
    listing = percentile(listings, 50)
    await client.aclose()
    return latencies, listing


def main():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp, simulator() as sim:
        queries_path = Path(tmp) / "queries.txt"
        with service(sim, 1, setup=SETUP.replace("QUERIES_PATH", str(queries_path))) as top:
            base = top.bases[0]
            queries = queries_path.read_text().split()
            latencies, listing = asyncio.run(measure(base, queries))
    print(f"library search: GET /api/documents/?q=WORD over {DOCUMENTS:,} documents of 400 words (SQLite)")
    print("| searches | p50 | p99 | first page, no query (p50) |")
    print("| ---: | ---: | ---: | ---: |")
    print(f"| {len(latencies)} | {percentile(latencies, 50):.1f} ms | {percentile(latencies, 99):.1f} ms | {listing:.1f} ms |")
