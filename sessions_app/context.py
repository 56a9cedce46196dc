"""What the model is told: the session config and the document items.

The server builds both; the browser only forwards the items on the data channel.
"""

from django.conf import settings

INSTRUCTIONS = (
    "You are a helpful voice assistant for the team {team}. Speak naturally and keep answers short. "
    "The conversation may start with documents the user chose, each inside <document id=... title=...> "
    "tags. Answer from them when they are relevant, say which document you used by its title, and say so "
    "plainly when the answer is not in them."
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


def session_config(req, instructions, max_output_tokens):
    """The GA `session` object sent to client_secrets (RealtimeSessionCreateRequestGA)."""
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
        # Drop 20% of the oldest turns at once when the context fills, which
        # keeps the prompt cache useful instead of busting it every turn.
        "truncation": {"type": "retention_ratio", "retention_ratio": 0.8},
    }


def client_secret_request(req, instructions, max_output_tokens):
    return {
        "expires_after": {"anchor": "created_at", "seconds": settings.CLIENT_SECRET_TTL_SECONDS},
        "session": session_config(req, instructions, max_output_tokens),
    }


def _attr(value):
    return " ".join(str(value).replace('"', "'").split())


def document_text_block(doc_id, title, text):
    # A closing tag inside the text must not end the document early.
    body = text.replace("</document>", "</ document>")
    return f'<document id="{_attr(doc_id)}" title="{_attr(title)}">\n{body}\n</document>'


def document_items(documents):
    """conversation.item.create events, one per document, in the order given."""
    return [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": document_text_block(d["id"], d["title"], d["text"])}],
            },
        }
        for d in documents
    ]
