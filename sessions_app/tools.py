"""The document-search tool: what the server declares in a session, and how it answers a call.

Documents too large to go into the conversation whole are searched instead:
the model calls `search_documents`, the server's sideband answers with the best
passages of this conversation's documents that the user may still read, each
labelled with its title and page or section, and keeps the call, its query and
the passages as the sources of the answer that follows.
"""

import json
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction

from documents_app.models import Document
from documents_app.passages import label
from documents_app.search import search_passages

from .models import RealtimeSession, Source, ToolCall

NAME = "search_documents"
PASSAGES_PER_SEARCH = 4
MAX_PASSAGE_CHARS = 2000  # each passage is a few hundred tokens; this only bounds an odd one
MAX_QUERY_CHARS = 500
DEFINITION = {
    "type": "function",
    "name": NAME,
    "description": (
        "Look things up in the user's documents that are too long to read in full. Call it before you answer "
        "any question those documents may answer, with the key words of the question as the query. It returns "
        "the best passages, each with its document's title and page or section. Answer only from what it "
        "returns, say which document and page or section you used, and if it finds nothing, say plainly that "
        "the documents do not say."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "The key words to look for, for example: rollout code Tangerine"},
        },
        "required": ["query"],
    },
}


def instructions(searched_titles):
    """What the model is told about the documents it must search rather than read."""
    titles = "; ".join(f"“{t}”" for t in searched_titles)
    return (
        f" These documents are too long to be in the conversation, so search them with {NAME} before answering "
        f"from them: {titles}. If the search finds nothing, say so plainly instead of guessing."
    )


@dataclass
class Answer:
    output: str
    tool_call: ToolCall
    sources: list = field(default_factory=list)


def _query(arguments):
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except (ValueError, RecursionError):
        return None
    query = parsed.get("query") if isinstance(parsed, dict) else None
    query = _storable(query).strip() if isinstance(query, str) else ""
    return query[:MAX_QUERY_CHARS] or None


def _storable(text):
    """The text with what a database cannot keep replaced: a lone surrogate (escaped in the model's
    JSON, it cannot be encoded) becomes "?", and a NUL (PostgreSQL refuses it) goes."""
    return str(text).encode("utf-8", "replace").decode("utf-8").replace("\x00", "")


def answer(session_id, function_call_id, name, arguments, response_id="", call=None):
    """Answer one function call of a conversation; the same call answered twice is answered the same."""
    session = RealtimeSession.objects.select_related("user").get(pk=session_id)
    function_call_id, name, response_id = _storable(function_call_id), _storable(name), _storable(response_id)
    for attempt in range(2):
        done = ToolCall.objects.filter(session=session, function_call_id=function_call_id).first()
        if done is not None:
            return Answer(done.output, done, list(done.sources.all()))
        query = _query(arguments) if name == NAME else None
        sources = []
        if name != NAME:
            output = f"There is no tool called {name}."
        elif query is None:
            output = f'{NAME} needs a query: the key words to look for, as {{"query": "..."}}.'
        else:
            output, sources = _search(session, query)
        output = _storable(output)
        try:
            # Kept together or not at all: a call kept without its sources would be returned so on every retry.
            with transaction.atomic():
                tool_call = ToolCall.objects.create(
                    session=session, call=call, function_call_id=function_call_id, name=name[:64],
                    query=query or "", output=output, response_id=response_id,
                )
                for source in sources:
                    source.tool_call = tool_call
                Source.objects.bulk_create(sources)
            return Answer(output, tool_call, sources)
        except IntegrityError:
            # A passage's document was deleted since the search (or the call was just answered elsewhere):
            # answered again, the search says the document is gone.
            if attempt:
                raise


def unavailable(titles):
    """What the model is told of the conversation's documents the user may no longer read."""
    return "".join(f" “{title}” is no longer available: it was deleted or is no longer shared." for title in titles)


def _search(session, query):
    chosen = [d for d in session.documents if d.get("id") != "pasted"]
    # Access is checked now, not when the conversation began: a document deleted or made
    # private since then is not searched, and the model is told so.
    readable = {
        str(pk) for pk in Document.objects.visible_to(session.user)
        .filter(pk__in=[d["id"] for d in chosen]).values_list("pk", flat=True)
    }
    notes = unavailable([d["title"] for d in chosen if d["id"] not in readable])
    if not readable:
        return (f"None of this conversation's documents can be searched any more.{notes} "
                "Tell the user the documents are not available."), []
    hits = search_passages(sorted(readable), query, PASSAGES_PER_SEARCH)
    if not hits:
        return (f"No passage of this conversation's documents matches “{query}”.{notes} "
                "Tell the user the documents do not say."), []
    parts, sources = [f"Passages for “{query}”, best first.{notes}"], []
    for number, hit in enumerate(hits, 1):
        passage = hit.passage
        text = passage.text[:MAX_PASSAGE_CHARS]
        parts.append(f"[{number}] {label(passage.title, passage.page, passage.section)}:\n{text}")
        sources.append(Source(position=number, document_id=passage.document_id, passage=passage,
                              title=passage.title, page=passage.page, section=passage.section, text=text))
    parts.append("Answer from these passages only, and say which document and page or section you used.")
    return "\n\n".join(parts), sources


def sources_by_item(session):
    """{answer item id: [source JSON]} for a conversation's answers that used the search tool."""
    found = {}
    for source in Source.objects.filter(tool_call__session=session).exclude(tool_call__answer_item_id="") \
            .select_related("tool_call").order_by("tool_call__created_at", "position"):
        found.setdefault(source.tool_call.answer_item_id, []).append(source.as_json())
    return found
