"""The one search seam: documents for the library, passages for the conversation's search tool.

Two real engines behind it, chosen by the database: SQLite FTS5 (bm25, snippet())
in the embedded default, PostgreSQL full-text (websearch_to_tsquery, ts_rank,
the GIN index, ts_headline) through django.contrib.postgres. Any text a person
can type is a valid query: it finds something or nothing, never an error.

Matched words in snippets are wrapped in MARK_START / MARK_END (two private-use
characters); `marked()` splits a snippet into plain and matched runs, which
the pages render as text, never as HTML.
"""

import functools
import operator
import re
import uuid
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection, transaction
from django.db.models import F

from teams_app.models import Membership, Team

from .models import Document, DocumentQuerySet, Passage

MARK_START, MARK_END = "\ue000", "\ue001"
MAX_QUERY_CHARS = 500
MAX_TERMS = 16
SNIPPET_WORDS = 24
RANK_CANDIDATES = 400
# Words too common to tell passages apart; a model's question is full of them.
STOPWORDS = frozenset(
    "a an and are as at be but by can could did do does for from had has have he her his how i if in into is it"
    " its me my no not of on or our she so than that the their them then there these they this those to us was"
    " we were what when where which who whom why will with would you your about tell say said please".split()
)
_WORD = re.compile(r"\w+")


@dataclass
class DocumentHit:
    document: Document
    snippet: str  # with MARK_START/MARK_END around matched words


@dataclass
class PassageHit:
    passage: Passage
    score: float


def clean(query):
    """The query as text an engine can take: bounded, without NUL or unpaired surrogates."""
    query = (query or "")[:MAX_QUERY_CHARS]
    return query.encode("utf-8", "replace").decode("utf-8").replace("\x00", " ").strip()


def terms(query, drop_stopwords=False):
    words = [w.lower() for w in _WORD.findall(clean(query)) if len(w) <= 64]
    if drop_stopwords:
        words = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(words))[:MAX_TERMS]


def marked(snippet):
    """[(text, matched)] runs of a snippet, for rendering as text."""
    runs, matched = [], False
    for part in re.split(f"([{MARK_START}{MARK_END}])", snippet):
        if part == MARK_START:
            matched = True
        elif part == MARK_END:
            matched = False
        elif part:
            runs.append((part, matched))
    return runs


def _postgres():
    return connection.vendor == "postgresql"


# ---- documents, for the library ----

def search_documents(user, query, limit=50):
    """The documents the user may see that match, most relevant first, each with a snippet."""
    visible = Document.objects.visible_to(user)
    words = terms(query)
    if not words:
        return []
    if _postgres():
        hits = _postgres_documents(visible, query, limit)
    else:
        hits = _sqlite_documents(user, words, limit)
    found = {hit.document.pk for hit in hits}
    if len(hits) < limit:
        # Titles that contain what was typed so far ("Orbi" for "Orbit plan") come after.
        titled = visible.filter(title__icontains=clean(query)).exclude(pk__in=found).listed_rows()
        hits += [DocumentHit(Document.from_listed_row(row), "") for row in titled[: limit - len(hits)]]
    return hits


def _sqlite_documents(user, words, limit):
    # Every word, in any order, as PostgreSQL's engine takes them. No prefix query for a word still being
    # typed: FTS5 merges the postings of every word that starts so ("zeba*": 2.8 s at 400,000
    # passages); titles that contain what was typed come after the ranked documents instead.
    match = " ".join(f'"{w}"' for w in words)
    # The same rule as Document.objects.visible_to(), written for the raw query.
    teams = [t.hex for t in Membership.objects.filter(user=user).values_list("team_id", flat=True)]
    owner = user.pk
    # bm25() is per row: rank the candidate passages, then keep each document's best. The title counts
    # most (every passage of the document carries it), so documents about the words come first; the
    # snippet comes from the document's passage whose own text matches best.
    sql = f"""
        SELECT p.document_id, p.id, bm25(documents_passage_fts, 8.0, 3.0, 1.0),
               bm25(documents_passage_fts, 0.0, 0.0, 1.0)
        FROM documents_passage_fts
        JOIN documents_app_passage p ON p.id = documents_passage_fts.rowid
        JOIN documents_app_document d ON d.id = p.document_id
        WHERE documents_passage_fts MATCH %s
          AND d.team_id IN ({",".join(["%s"] * len(teams)) or "NULL"})
          AND (d.visibility = 'team' OR d.owner_id = %s)
        LIMIT {RANK_CANDIDATES}  -- as on PostgreSQL: a common word is in 20,000 passages; rank some
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [match, *teams, owner])
        best, chosen = {}, {}  # document -> its best score; document -> (text score, passage)
        for doc_id, passage_id, score, text_score in cursor.fetchall():
            best[doc_id] = min(score, best.get(doc_id, score))
            chosen[doc_id] = min((text_score, passage_id), chosen.get(doc_id, (text_score, passage_id)))
        ranked = sorted(best, key=lambda doc_id: (best[doc_id], doc_id))[:limit]
        if not ranked:
            return []
        passage_ids = [chosen[doc_id][1] for doc_id in ranked]
        # FTS5 takes a rowid range but not a list: bounded, it stops reading the words' postings past
        # the last passage wanted instead of going through every match in the library (3 -> 1 ms).
        cursor.execute(
            f"""SELECT rowid, snippet(documents_passage_fts, 2, %s, %s, '…', {SNIPPET_WORDS})
                FROM documents_passage_fts WHERE documents_passage_fts MATCH %s
                AND rowid BETWEEN %s AND %s AND rowid IN ({",".join(["%s"] * len(passage_ids))})""",
            [MARK_START, MARK_END, match, min(passage_ids), max(passage_ids), *passage_ids],
        )
        snippets = dict(cursor.fetchall())
    rows = Document.objects.filter(pk__in=[uuid.UUID(d) for d in ranked]).listed_rows()
    documents = {row[0].hex: Document.from_listed_row(row) for row in rows}
    return [DocumentHit(documents[doc_id], snippets.get(chosen[doc_id][1], "")) for doc_id in ranked]


HEADLINE_OPTIONS = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords={SNIPPET_WORDS}, MinWords=12"
# Characters of a passage given to ts_headline around its first match: a snippet is at most
# SNIPPET_WORDS words (about 170 characters), and the window holds that with room on both sides.
# Parsing is what a headline costs: 480 characters took 6 ms for 50 results, 320 take 4.7.
WINDOW_BEFORE, WINDOW = 100, 320


def _postgres_documents(visible, query, limit):
    """One statement: the candidate passages (at most RANK_CANDIDATES, found by the GIN index and
    ranked), each document's best, the first `limit` documents with their owners and teams, and a
    headline of each one's best passage. As separate queries these were five round trips and
    model-building for rows the page shows only a few fields of."""
    query = clean(query)
    visible_sql, visible_params = visible.order_by().values("id").query.sql_with_params()
    people = get_user_model()
    sql = rf"""
        WITH candidates AS (
            SELECT p.document_id, p.id, ts_rank(p.search, q) AS rank
            FROM documents_app_passage p CROSS JOIN websearch_to_tsquery('english', %s) q
            -- Asked of each candidate in turn (OFFSET 0 keeps it so): as a join, the planner liked to
            -- hash every visible document first (4 ms at 10,000) to check a few hundred passages.
            WHERE p.search @@ q AND EXISTS (SELECT FROM ({visible_sql}) v WHERE v.id = p.document_id OFFSET 0)
            LIMIT {RANK_CANDIDATES}
        ), best AS (
            SELECT DISTINCT ON (document_id) document_id, id, rank FROM candidates
            ORDER BY document_id, rank DESC, id
        ), top AS (
            SELECT document_id, id, rank FROM best ORDER BY rank DESC, document_id LIMIT %s
        ), windows AS (
            SELECT top.document_id, top.rank, p.text, q,
                   tsvector_to_array(ts_filter(p.search, '{{c}}')) && stems.list AS in_text,
                   ts_headline('english', regexp_replace(regexp_replace(
                       substr(p.text, w.start, {WINDOW}),
                       CASE WHEN w.start > 1 THEN '^\S*\s+' ELSE '^$' END, ''),
                       CASE WHEN w.start + {WINDOW} <= length(p.text) THEN '\s+\S*$' ELSE '^$' END, ''),
                       q, %s) AS near
            FROM top JOIN documents_app_passage p ON p.id = top.id
            CROSS JOIN websearch_to_tsquery('english', %s) q
            CROSS JOIN (SELECT tsvector_to_array(to_tsvector('english', %s)) AS list) stems
            CROSS JOIN LATERAL (
                SELECT greatest(1, min(nullif(strpos(lower(p.text), stem), 0)) - {WINDOW_BEFORE}) AS start
                FROM unnest(stems.list) stem
            ) w
            OFFSET 0  -- computed once: inlined, each use of "near" would make it again
        )
        SELECT d.id, {", ".join(f"d.{name}" for name in DocumentQuerySet.LISTED)}, d.owner_id, u.username,
               d.team_id, t.name,  -- as Document.objects.listed_rows() reads them
               CASE WHEN strpos(near, %s) > 0 OR NOT in_text THEN near ELSE ts_headline('english', windows.text, q, %s) END
        FROM windows JOIN documents_app_document d ON d.id = windows.document_id
        JOIN {people._meta.db_table} u ON u.id = d.owner_id JOIN {Team._meta.db_table} t ON t.id = d.team_id
        ORDER BY windows.rank DESC, d.id
    """
    params = [query, *visible_params, limit, HEADLINE_OPTIONS, query, query, MARK_START, HEADLINE_OPTIONS]
    with transaction.atomic(), connection.cursor() as cursor:
        # With a LIMIT the planner likes to scan the table and test each row's vector (100 ms on
        # 400,000 passages) rather than ask the GIN index (15 ms): tell it not to, for this query.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [DocumentHit(Document.from_listed_row(row[:-1]), row[-1]) for row in rows]


# ---- passages, for the conversation's search tool ----

def search_passages(document_ids, query, limit=4):
    """The passages of these documents best matching any word of the query, best first."""
    words = terms(query, drop_stopwords=True)
    if not words or not document_ids:
        return []
    if _postgres():
        tsquery = functools.reduce(operator.or_, [SearchQuery(w, config="english") for w in words])
        rows = (
            Passage.objects.filter(document_id__in=document_ids, search=tsquery)
            .annotate(rank=SearchRank(F("search"), tsquery))
            .order_by("-rank", "pk")[:limit]
        )
        return [PassageHit(p, float(p.rank)) for p in rows]
    rows = _sqlite_passages([getattr(d, "hex", str(d).replace("-", "")) for d in document_ids], words, limit)
    passages = Passage.objects.in_bulk([row[0] for row in rows])
    return [PassageHit(passages[pk], -score) for pk, score in rows]


# One document's passages, as the FTS5 table can be asked for them: its rowid range (a document's
# passages are written together), with the document checked again in case another's fall inside.
# CROSS JOIN keeps SQLite from starting at the passages and asking FTS5 about each (30x slower).
_IN_DOCUMENT = """FROM documents_passage_fts CROSS JOIN documents_app_passage p ON p.id = documents_passage_fts.rowid
                  WHERE documents_passage_fts MATCH %s AND documents_passage_fts.rowid BETWEEN %s AND %s
                  AND p.document_id = %s"""


def _sqlite_passages(document_ids, words, limit):
    """FTS5 matches over the whole index, so a MATCH joined to a few documents ranked every passage
    of the library holding the words (400 ms at 400,000 passages); asked one document's rowid range at
    a time it reads only those. bm25() still counts, per statement, every passage of the library
    holding each word: words in more than half of these documents' passages (they tell none apart
    here), and words in none, are left out of the ranking."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT document_id, MIN(id), MAX(id), COUNT(*) FROM documents_app_passage
                WHERE document_id IN ({",".join(["%s"] * len(document_ids))}) GROUP BY document_id""",
            document_ids,
        )
        ranges = cursor.fetchall()
        if not ranges:
            return []
        passages = sum(row[3] for row in ranges)
        counting, params = [], []
        for index, word in enumerate(words):
            for document_id, first, last, _ in ranges:
                counting.append(f"SELECT {index} AS word {_IN_DOCUMENT}")
                params += [f'"{word}"', first, last, document_id]
        cursor.execute(f"SELECT word, COUNT(*) FROM ({' UNION ALL '.join(counting)}) GROUP BY word", params)
        found = {words[index]: count for index, count in cursor.fetchall()}
        if not found:
            return []
        telling = [w for w in words if 0 < found.get(w, 0) <= passages / 2]
        # Only words every other passage holds: bm25 cannot tell those passages apart either (and
        # counts a word in every title over the whole library), so they come in document order.
        score = "bm25(documents_passage_fts, 2.0, 1.5, 1.0)" if telling else "0.0"
        match = " OR ".join(f'"{w}"' for w in telling or found)
        ranking, params = [], []
        for document_id, first, last, _ in ranges:
            ranking.append(f"SELECT p.id AS id, {score} AS score {_IN_DOCUMENT}")
            params += [match, first, last, document_id]
        cursor.execute(f"{' UNION ALL '.join(ranking)} ORDER BY score, id LIMIT %s", [*params, limit])
        return cursor.fetchall()
