"""Library search, the search tool and indexing, over 10,000 documents (400,000 passages), on both engines.

For each engine (SQLite FTS5 in one uvicorn process; PostgreSQL full-text with
the GIN index): a library of DOCUMENTS documents of PASSAGES passages each is
made with the passages' words drawn from a 20,000-word vocabulary with a
Zipf-like spread (so some words are everywhere and most are rare, as in real
text), then:
- library search: GET /api/documents/?q= with one or two mid-frequency words,
  by a signed-in member of the team, through HTTP (keep-alive, the benchmarks' own
  small HTTP/1.1 client): the API's page (the best 20), then with limit=50 (the most
  it answers);
- the search tool: sessions_app.tools.answer() for a conversation of 5 of
  those documents, with a spoken-style question, in a process on the same
  database (the server time of one tool answer: search, passages, stored sources);
- indexing: 20 Markdown documents of about 12,000 tokens cut into passages and
  stored (passages/s), against extracting the same files (documents_app.extract).
"""

import json
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from .harness import percentile, signed_in_http1, simulator, topology

DOCUMENTS = 10_000
PASSAGES = 40
WORDS_PER_PASSAGE = 160
SEARCHES = 200
TOOL_CALLS = 200

SETUP = f"""
import itertools, random, time
from documents_app.models import Document, Passage
rng = random.Random(7)
syll = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'ti', 'vo', 'ze', 'qu', 'ba', 'do', 'fe', 'gi', 'hu']
vocab = sorted({{''.join(rng.choice(syll) for _ in range(rng.randint(2, 4))) for _ in range(40000)}})[:20000]
rng.shuffle(vocab)
weights = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(vocab))))
# Passages are ten sentences each out of a pool of 50,000, drawn afresh for every passage.
sentences = [' '.join(rng.choices(vocab, cum_weights=weights, k=16)).capitalize() + '.' for _ in range(50000)]
owner = U.objects.get(username='bench0')
started = time.perf_counter()
for first in range(0, {DOCUMENTS}, 250):
    docs = [Document(team=t, owner=owner, title=f'Report {{i}} ' + rng.choice(vocab), filename=f'r{{i}}.md',
                     kind='markdown', text='(passages only)', sha256=f'{{i:064d}}', tokens={PASSAGES * 200},
                     size_bytes=1) for i in range(first, first + 250)]
    Document.objects.bulk_create(docs)
    passages = []
    for doc in docs:
        for position in range({PASSAGES}):
            words = ' '.join(rng.choices(sentences, k={WORDS_PER_PASSAGE // 16}))
            passages.append(Passage(document=doc, position=position, start=0, end=0, text=words,
                                    tokens=200, page=position // 4 + 1, title=doc.title))
    Passage.objects.bulk_create(passages, batch_size=2000)
elapsed = time.perf_counter() - started
# The library as it stands a while after a load this size: fresh statistics (else the planner guesses)
# and, on PostgreSQL, autovacuum and a checkpoint past (else the first searches write hint bits on every
# page they read, beside autovacuum's own pass over 1.5 GB and the checkpoint writing it all out).
from django.db import connection
with connection.cursor() as cursor:
    if connection.vendor == 'postgresql':
        cursor.execute('VACUUM ANALYZE')
        cursor.execute('CHECKPOINT')
    else:
        cursor.execute('ANALYZE')
# Mid-frequency words: each in some thousands of the 400,000 passages (1 in 100 to 1 in 15).
queries = [' '.join(rng.sample(vocab[300:3000], rng.choice((1, 2)))) for _ in range(60)]
questions = ['what does the report say about ' + ' and '.join(rng.sample(vocab[300:3000], 2)) for _ in range(60)]
info = json.dumps({{'queries': queries, 'questions': questions, 'load_s': elapsed,
                    'passages': Passage.objects.count()}})
open('OUT_PATH', 'w').write(info)
print(info)
"""

TOOL_TIMING = f"""
import json, time
from sessions_app import tools
from sessions_app.models import RealtimeSession
from documents_app.models import Document
data = json.loads(open('OUT_PATH').read())
owner = U.objects.get(username='bench0')
docs = list(Document.objects.order_by('pk')[:5])
session = RealtimeSession.objects.create(user=owner, team=t, model='gpt-realtime', voice='marin',
    turn_detection='server_vad', instructions='x',
    documents=[{{'id': str(d.pk), 'title': d.title, 'tokens': d.tokens, 'sha256': d.sha256, 'mode': 'search'}}
               for d in docs])
times, found = [], 0
for i in range({TOOL_CALLS}):
    question = data['questions'][i % len(data['questions'])]
    began = time.perf_counter()
    answer = tools.answer(session.pk, f'call_{{i}}', tools.NAME, json.dumps({{'query': question}}), 'resp')
    times.append((time.perf_counter() - began) * 1000)
    found += bool(answer.sources)
print(json.dumps({{'tool_ms': times, 'found': found}}))
"""

INDEXING = """
import json, random, time
from documents_app import extract
from documents_app.models import Document
rng = random.Random(3)
words = ['launch', 'budget', 'region', 'schedule', 'team', 'review', 'contract', 'supplier', 'quarter', 'risk',
         'payment', 'delivery', 'customer', 'report', 'office', 'travel', 'training', 'policy', 'safety', 'audit']
owner = U.objects.get(username='bench0')
texts = []
for d in range(20):
    parts = [f'# Handbook {d}']
    for s in range(40):
        parts.append(f'## Section {s}')
        parts.append(' '.join(' '.join(rng.choices(words, k=rng.randint(8, 20))).capitalize() + '.' for _ in range(20)))
    texts.append('\\n\\n'.join(parts))
extract_s = index_s = 0.0
passages = tokens = 0
for n, text in enumerate(texts):
    began = time.perf_counter()
    result = extract.extract_text(text.encode(), f'handbook{n}.md')
    extract_s += time.perf_counter() - began
    began = time.perf_counter()
    doc = Document.objects.create(team=t, owner=owner, title=f'Handbook {n}', filename=f'h{n}.md', kind='markdown',
                                  text=result.text, sha256=Document.hash_text(result.text), tokens=0,
                                  size_bytes=len(text), outline=result.outline)
    index_s += time.perf_counter() - began
    passages += doc.passages.count()
    tokens += sum(doc.passages.values_list('tokens', flat=True))
print(json.dumps({'extract_s': extract_s, 'index_s': index_s, 'passages': passages, 'tokens': tokens,
                  'documents': len(texts)}))
"""


def _manage_json(top, code, out_path):
    result = top.manage("shell", "-c", _PREAMBLE + code.replace("OUT_PATH", str(out_path)),
                        stdout=subprocess.PIPE, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


_PREAMBLE = (
    "import json\nfrom django.contrib.auth import get_user_model\nfrom teams_app.models import Team\n"
    "U = get_user_model(); t = Team.objects.get(name='Bench')\n"
)


async def _searches(base, queries, limit):
    # The load generator's own small client, as bench/start.py's: httpx spent 1-2 ms of CPU a
    # request, on the cores the server and PostgreSQL share.
    client = await signed_in_http1(base, "bench0")
    extra = "" if limit is None else f"&limit={limit}"

    def path(query):
        return f"/api/documents/?{urlencode({'q': query})}{extra}"

    for q in queries[:5]:
        await client.get(path(q))
    latencies, hits = [], 0
    for i in range(SEARCHES):
        began = time.perf_counter()
        status, content = await client.get(path(queries[i % len(queries)]))
        latencies.append((time.perf_counter() - began) * 1000)
        assert status == 200, status
        hits += bool(json.loads(content)["documents"])
    await client.close()
    return latencies, hits


def measure(engine):
    import asyncio

    with tempfile.TemporaryDirectory() as tmp, simulator() as sim:
        out = Path(tmp) / "library.json"
        with topology(sim, 1, shared=engine == "postgresql") as top:
            info = _manage_json(top, SETUP, out)
            # The API's page (the best 20, as the voice page's picker asks), then the most it gives (50).
            latencies, hits = asyncio.run(_searches(top.bases[0], info["queries"], None))
            latencies_50, _ = asyncio.run(_searches(top.bases[0], info["queries"], 50))
            tool = _manage_json(top, TOOL_TIMING, out)
            indexing = _manage_json(top, INDEXING, out)
    return info, (latencies, latencies_50), hits, tool, indexing


def main():
    rows = []
    for engine in ("sqlite", "postgresql"):
        info, latencies, hits, tool, indexing = measure(engine)
        rows.append((engine, info, latencies, hits, tool, indexing))
    print(f"library search, search tool and indexing: {DOCUMENTS:,} documents of {PASSAGES} passages "
          f"({WORDS_PER_PASSAGE} words each), one uvicorn process")
    print("| engine | passages | library search p50 | p99 | with results | 50 results p50 | p99 | "
          "tool answer p50 | p99 | with passages |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for engine, info, (latencies, latencies_50), hits, tool, _ in rows:
        print(f"| {engine} | {info['passages']:,} | {percentile(latencies, 50):.1f} ms | "
              f"{percentile(latencies, 99):.1f} ms | {hits}/{SEARCHES} | {percentile(latencies_50, 50):.1f} ms | "
              f"{percentile(latencies_50, 99):.1f} ms | {percentile(tool['tool_ms'], 50):.1f} ms | "
              f"{percentile(tool['tool_ms'], 99):.1f} ms | {tool['found']}/{TOOL_CALLS} |")
    print("| engine | documents indexed | passages | passages/s | tokens/s | extraction of the same files | "
          "indexing / extraction |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for engine, info, _, _, _, idx in rows:
        print(f"| {engine} | {idx['documents']} | {idx['passages']:,} | {idx['passages'] / idx['index_s']:,.0f} | "
              f"{idx['tokens'] / idx['index_s']:,.0f} | {idx['extract_s'] * 1000:,.0f} ms | "
              f"{idx['index_s'] / idx['extract_s']:.2f}x |")
    for engine, info, *_ in rows:
        print(f"{engine}: the 400,000-passage library took {info['load_s']:.0f} s to load and index")
