"""What the model is told: the session config, the document items and, on a resumed call, the earlier turns.

The server builds all of it; its sideband creates the items in each call.
"""

import json
import re

from django.conf import settings

from documents_app.tokens import count_tokens

from .tools import DEFINITION, unavailable

INSTRUCTIONS = (
    "You are a helpful voice assistant for the team {team}. Speak naturally and keep answers short. "
    "The conversation may start with documents the user chose, each inside <document id=... title=...> "
    "tags (a long one comes in several parts with the same id). Answer from them when they are relevant, say "
    "which document you used by its title, and say so plainly when the answer is not in them."
)


def turn_detection_config(mode):
    if mode == "push_to_talk":
        return None
    if mode == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }


def instructions_for(team):
    return INSTRUCTIONS.format(team=team.name if team else "you")


def session_config(req, instructions, max_output_tokens, with_search=False):
    """The GA `session` object sent to client_secrets (RealtimeSessionCreateRequestGA); with the
    document-search tool when some documents are searched rather than read whole."""
    return {
        "type": "realtime",
        "model": req.model,
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "transcription": {"model": settings.TRANSCRIPTION_MODEL},
                "turn_detection": turn_detection_config(req.turn_detection),
            },
            "output": {"voice": req.voice},
        },
        "max_output_tokens": min(max_output_tokens, 4096),
        # Said outright, so the sideband can tell when a page changed them.
        "tools": [DEFINITION] if with_search else [],
        "tool_choice": "auto",
        # Drop 20% of the oldest turns at once when the context fills, which
        # keeps the prompt cache useful instead of busting it every turn.
        "truncation": {"type": "retention_ratio", "retention_ratio": 0.8},
    }


def client_secret_request(config):
    """The body of POST /v1/realtime/client_secrets for one call of a conversation."""
    return {
        "expires_after": {"anchor": "created_at", "seconds": settings.CLIENT_SECRET_TTL_SECONDS},
        "session": config,
    }


# What the sideband restores when a session.updated shows the page changed it.
POLICED_FIELDS = ("instructions", "tools", "tool_choice", "max_output_tokens")


# No event the server sends into a call is larger than this, so no data-channel
# message passes 16 KiB: the upstream echoes every item to the page, with a
# few hundred bytes of its own around it, well under SCTP's 64 KiB default.
MAX_EVENT_BYTES = 15 * 1024
# Room for the part label's digits, whatever the number of parts.
_LABEL_SLACK = len(' part="99999 of 99999"')


def encode_event(event):
    """The bytes sent for one client event: compact JSON, UTF-8."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _attr(value):
    return " ".join(str(value).replace('"', "'").split())


def _message(item_id, role, text):
    kind = "output_text" if role == "assistant" else "input_text"
    return {
        "type": "conversation.item.create",
        # An error about this event names it, and so the item.
        "event_id": f"create-{item_id}",
        "item": {"id": item_id, "type": "message", "role": role, "content": [{"type": kind, "text": text}]},
    }


def _escaped_size(text):
    # Measured as ASCII-escaped JSON, the larger of the two ways the text may travel.
    return len(json.dumps(text)) - 2


def split_text(text, budget):
    """Pieces of text whose JSON-escaped size is at most `budget` bytes, cut at whitespace where possible."""
    pieces, current, size = [], [], 0
    for word in re.findall(r"\S*\s*", text):
        if not word:
            continue
        cost = _escaped_size(word)
        if size + cost > budget and current:
            pieces.append("".join(current))
            current, size = [], 0
        while cost > budget:  # one "word" longer than a whole piece: cut it by characters
            head = word[: max(1, len(word) * budget // cost)]
            while _escaped_size(head) > budget:
                head = head[: len(head) * 9 // 10]
            pieces.append(head)
            word = word[len(head):]
            cost = _escaped_size(word)
        current.append(word)
        size += cost
    if current:
        pieces.append("".join(current))
    return pieces or [""]


def document_events(documents, id_prefix):
    """conversation.item.create events for the documents, in the order given.

    Each document is one user message labelled <document id=... title=...>; a
    long one is split over several, labelled part="i of n", so every event stays
    under MAX_EVENT_BYTES.
    """
    events = []
    for doc in documents:
        head = f'<document id="{_attr(doc["id"])}" title="{_attr(doc["title"])}"'
        # A closing tag inside the text must not end the document early.
        body = doc["text"].replace("</document>", "</ document>")
        empty = _message(f"{id_prefix}{len(events):04d}", "user", f"{head}>\n\n</document>")
        budget = MAX_EVENT_BYTES - len(json.dumps(empty)) - _LABEL_SLACK
        parts = split_text(body, budget)
        for number, part in enumerate(parts, 1):
            label = f'{head} part="{number} of {len(parts)}">' if len(parts) > 1 else f"{head}>"
            events.append(_message(f"{id_prefix}{len(events):04d}", "user", f"{label}\n{part}\n</document>"))
    return events


def unavailable_event(titles, id_prefix):
    """The note that these documents of the conversation are not in this call: the user may no longer read them."""
    return _message(f"{id_prefix}gone", "system", unavailable(titles).strip() + " Say so if the user asks about them.")


HISTORY_PREAMBLE = (
    "The conversation continues from an earlier call that ended. "
    "The turns that follow are what was said before; carry on from them."
)


def history_events(turns, max_tokens, id_prefix):
    """Earlier turns, re-created for the next call: user turns as input_text, assistant turns as
    output_text, the newest that fit in `max_tokens`, oldest dropped first."""
    kept, used = [], 0
    for role, text in reversed(turns):
        text = text.strip()
        if not text:
            continue
        tokens = count_tokens(text)
        if used + tokens > max_tokens:
            break
        kept.append((role, text))
        used += tokens
    if not kept:
        return []
    events = [_message(f"{id_prefix}h000", "system", HISTORY_PREAMBLE)]
    for number, (role, text) in enumerate(reversed(kept), 1):
        event = _message(f"{id_prefix}h{number:03d}", role, "")
        budget = MAX_EVENT_BYTES - len(json.dumps(event))
        # A turn too long for one event keeps its end: the latest words matter most.
        while _escaped_size(text) > budget:
            text = "…" + text[len(text) // 10 + 1:]
        event["item"]["content"][0]["text"] = text
        events.append(event)
    return events
