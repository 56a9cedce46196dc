"""Text from outside (a page, the upstream, a person) made fit for the database."""

import re

# NUL is refused by PostgreSQL; a lone surrogate cannot be encoded at all.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(text):
    """The text without NUL, and with each unpaired surrogate shown as U+FFFD."""
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)
