"""The ticket's text: what Check hands to Envoy and the access log hands back.

A token-metered allow carries one dynamic-metadata entry, ``hold`` (namespace
``envoy.filters.http.ext_authz``), whose string value is the whole ticket:

    <hold id> <held> <estimate> <key hash> <dialect> <model>

separated by single spaces; the model comes last, so a model name with spaces survives.
One entry instead of six keeps every metered request cheaper at each step that copies
the metadata: keyguard's answer, Envoy's merge and access-log entry, and the reading
back at settlement (one map lookup and one split).

Tickets minted before this format (one metadata entry per field) are still read, so a
request admitted by an older replica during a rolling upgrade settles like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The names assess() reads, in the order of the text.
FIELDS = ("hold", "held", "estimate", "kh", "dialect", "model")
# A ticket's fields as text, in that order.
TicketFields = tuple[str, str, str, str, str, str]
DIALECTS = ("openai", "anthropic")


def ticket_tail(key_hash: str, model: str, anthropic: bool) -> str:
    """The part of a ticket's text that a key's requests for one model share."""
    return f" {key_hash} {DIALECTS[anthropic]} {model}"


def ticket_head(hold_id: str, held: int, estimate: int) -> str:
    """The part of a ticket's text that is new on every request."""
    return f"{hold_id} {held} {estimate}"


def parse_ticket(text: str) -> dict[str, str] | None:
    """The ticket's fields by name, or None when ``text`` is not a ticket's text (a
    bare hold id: a ticket of the older format, whose fields are separate entries)."""
    parts = text.split(" ", 5)
    if len(parts) != 6:
        return None
    return dict(zip(FIELDS, parts, strict=True))


def legacy_ticket(fields: Mapping[str, Any]) -> TicketFields:
    """A ticket of the older format: each field its own metadata entry (a Struct's
    fields), each a string; its six fields in the order of the text (a missing field, or
    a value of another kind, reads as "")."""
    hold_id, held, estimate, key_hash, dialect, model = (
        "" if (value := fields.get(name)) is None else value.string_value for name in FIELDS
    )
    return hold_id, held, estimate, key_hash, dialect, model
