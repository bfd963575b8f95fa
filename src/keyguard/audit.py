"""The audit trail: every change to keys, prices and admin tokens, from the CLI or the API.

Entries go to one bounded Redis stream (``kg:audit``, ``XADD MAXLEN ~``): who (the
actor), what (the action), on what (the target: a key id, a model pattern, a token id)
and the fields the change gave, never a secret. The stream id is the entry's id and
carries its time (Redis's clock, in milliseconds).

The management core (``keyring.Keyring``, ``keyring.prices.PriceEditor``,
``admin.auth.TokenStore``) records an entry after each change succeeds, with the actor
it was built for, so that the CLI and the API share one place and nothing is recorded
twice or missed. A change that was refused records nothing.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from keyguard.errors import InvalidChange, StoreError
from keyguard.store.connect import SyncClient

AUDIT_STREAM = "kg:audit"
# About this many entries are kept (MAXLEN ~): years of changes for a normal fleet.
AUDIT_MAXLEN = 100_000
# The actor prefix of a change made by a process on this machine (the CLI).
CLI_ACTOR = "cli"
_STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_SCAN_BATCH = 500


def local_actor() -> str:
    """``cli:<OS user>``: the actor of a change made through the CLI on this machine."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (a container running as a bare uid)
        user = f"uid{os.getuid()}"
    return f"{CLI_ACTOR}:{user}"


def iso_ms(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_since(text: str, now: float | None = None) -> int:
    """``--since``: a duration ago (``30m``, ``2h``, ``7d``), an ISO date or date-time
    (UTC when it has no zone), or epoch seconds; answered as epoch milliseconds."""
    from keyguard.keyring.values import duration

    value = text.strip()
    now = time.time() if now is None else now
    if not value:
        raise InvalidChange("empty time: use e.g. 1h, 7d, 2027-01-31 or 2027-01-31T12:00:00Z")
    if value.isascii() and value.isdigit() and len(value) >= 9:  # epoch seconds
        return int(value) * 1000
    if value[-1].lower() in "smhdw" and value[:-1].isascii() and value[:-1].isdigit():
        return int((now - duration(value)) * 1000)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidChange(
            f"bad time {text!r}: use a duration ago (1h, 7d), a date (2027-01-31),"
            " an ISO date-time (2027-01-31T12:00:00Z) or epoch seconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def check_cursor(cursor: str) -> str:
    if not _STREAM_ID.match(cursor):
        raise InvalidChange(f"bad cursor {cursor!r}: pass the next_cursor of a previous page")
    return cursor


def entry_info(entry_id: str, raw: Mapping[str, str]) -> dict[str, Any]:
    """One entry for people and scripts."""
    try:
        fields = json.loads(raw.get("fields", "{}"))
    except ValueError:
        fields = {}
    return {
        "id": entry_id,
        "time": iso_ms(int(entry_id.partition("-")[0])),
        "actor": raw.get("actor", ""),
        "action": raw.get("action", ""),
        "target": raw.get("target", ""),
        "fields": fields if isinstance(fields, dict) else {},
    }


class Audit:
    """The audit stream over a synchronous client (the CLI's, the admin API's)."""

    def __init__(self, client: SyncClient, maxlen: int = AUDIT_MAXLEN) -> None:
        self.client = client
        self.maxlen = maxlen

    def record(self, actor: str, action: str, target: str, fields: Mapping[str, Any]) -> str:
        """Append one entry after a change succeeded; answers with its id.

        The change is already made when this runs: a failure says so instead of
        pretending that nothing happened.
        """
        entry = {
            "actor": actor,
            "action": action,
            "target": target,
            "fields": json.dumps(dict(fields), separators=(",", ":"), sort_keys=True),
        }
        try:
            entry_id = self.client.xadd(
                AUDIT_STREAM,
                entry,  # type: ignore[arg-type]
                maxlen=self.maxlen,
                approximate=True,
            )
        except Exception as exc:
            raise StoreError(
                f"{action} {target} was done, but its audit entry could not be written"
                f" ({type(exc).__name__}: {exc})"
            ) from None
        return str(entry_id)

    def read(
        self,
        *,
        target: str | None = None,
        since_ms: int | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Entries oldest first, from ``since_ms`` or after the cursor ``after``, at
        most ``limit``, only those on ``target`` when given; and the cursor of the next
        page (None when this page reached the end)."""
        if after is not None:
            start = "(" + check_cursor(after)
        elif since_ms is not None:
            start = f"{max(since_ms, 0)}-0"
        else:
            start = "-"
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            batch = cast(
                list[tuple[str, dict[str, str]]],
                self.client.xrange(AUDIT_STREAM, min=start, max="+", count=_SCAN_BATCH),
            )
            for entry_id, raw in batch:
                if target is None or raw.get("target") == target:
                    out.append(entry_info(str(entry_id), raw))
                    if len(out) == limit:
                        return out, out[-1]["id"]
            if len(batch) < _SCAN_BATCH:
                return out, None
            start = "(" + str(batch[-1][0])
        return out, None


__all__ = ["AUDIT_STREAM", "Audit", "check_cursor", "entry_info", "local_actor", "parse_since"]
