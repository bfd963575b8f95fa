"""The price table every replica shares: its changes, their validation and errors.

The table is the Redis hash ``kg:prices`` (model pattern → ``Price.to_json()``).
``PriceEditor`` sets, shows, lists, removes and imports prices; every change publishes
``PRICES_CHANGED`` on ``kg:events`` so that every server reloads the table. The CLI
(``keyguard prices …``) and the admin API both call it.

An import reads and validates the whole file before Redis is touched, then writes
the table in one atomic step (a Lua script on the one key): it either lands entirely
or not at all. By default it replaces the table; ``merge=True`` keeps the patterns
the file does not name.

Like ``Keyring``, a ``PriceEditor`` is built for one actor and records every change on
the audit stream after it succeeds.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import yaml

from keyguard.audit import Audit, local_actor
from keyguard.errors import InvalidChange, KeyringError, UnknownPrice
from keyguard.prices import FIELDS, Price, check_pattern, price_from_fields, price_from_json
from keyguard.store import EVENTS_CHANNEL, PRICES_CHANGED, PRICES_KEY
from keyguard.store.connect import SyncClient

# A price file bigger than this is a mistake (a log, a dump), not a price table.
MAX_FILE_BYTES = 4 * 1024 * 1024

# KEYS[1] = the price hash; ARGV = pattern, price JSON, pattern, price JSON, ...
# Replaces the whole table in one step and answers with the patterns it had.
_REPLACE = """
local old = redis.call('HKEYS', KEYS[1])
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return old
"""


def price_info(pattern: str, price: Price) -> dict[str, Any]:
    """A price for people and scripts: the model pattern, then every field."""
    return {"model": pattern, **asdict(price)}


def fields_from_text(options: Mapping[str, str | None]) -> dict[str, object]:
    """Command-line values (text; None = not given) as price fields.

    Text that reads as a whole number becomes one, so that ``price_from_fields``
    says "-5 is negative" rather than "'-5' is not a whole number"; anything else
    goes on as text and is refused there.
    """
    fields: dict[str, object] = {}
    for name, text in options.items():
        if text is None:
            continue
        try:
            fields[name] = int(text)
        except ValueError:
            fields[name] = text
    return fields


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names one key twice."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in out
        except TypeError:  # an unhashable key (a list): refused later as not a name
            raise InvalidChange(f"line {key_node.start_mark.line + 1}: bad model") from None
        if duplicate:
            raise InvalidChange(f"line {key_node.start_mark.line + 1}: {key!r} is given twice")
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidChange(f"{key!r} is given twice")
        out[key] = value
    return out


def _load(text: str, as_json: bool) -> object:
    if as_json:
        try:
            return json.loads(text, object_pairs_hook=_json_pairs)
        except json.JSONDecodeError as exc:
            raise InvalidChange(
                f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # A bare * starts a YAML alias; the default price must be written "*".
        hint = '; write the default price as "*"' if "alias" in (exc.context or "") else ""
        raise InvalidChange(
            f"not valid YAML ({_one_line(exc.problem or '')}{where}){hint}"
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidChange(f"not valid YAML ({_one_line(str(exc))})") from None


def parse_price_table(text: str, as_json: bool = False) -> dict[str, Price]:
    """A whole price table from the text of a file (JSON, or YAML, which JSON also is).

    The file is a mapping of model pattern → fields in snake case (``input``,
    ``output``, ``cached_input``, ``cache_write``, ``per_request``, ``max_output``).
    The first bad entry raises ``InvalidChange`` naming it; nothing is returned then.
    """
    data = _load(text, as_json)
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        raise InvalidChange(f"expected a mapping of model → price, got {kind}")
    if not data:
        raise InvalidChange("no prices in it; use `keyguard prices remove` to remove prices")
    table: dict[str, Price] = {}
    for pattern, fields in data.items():
        if not isinstance(pattern, str):
            raise InvalidChange(f"bad model {pattern!r}: a model pattern is text")
        check_pattern(pattern)
        if not isinstance(fields, dict):
            raise InvalidChange(
                f"{pattern}: expected a mapping of fields ({', '.join(FIELDS)}),"
                f" got {type(fields).__name__}"
            )
        table[pattern] = price_from_fields(fields, where=pattern)
    return table


def read_price_file(path: str) -> dict[str, Price]:
    """``parse_price_table`` over a file (``-`` = standard input); one-line errors
    that name the file. A ``.json`` file is read as JSON, anything else as YAML."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            text = sys.stdin.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read(MAX_FILE_BYTES + 1)
    except UnicodeDecodeError:
        raise InvalidChange(f"{name}: not UTF-8 text") from None
    except OSError as exc:
        raise InvalidChange(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(text) > MAX_FILE_BYTES:
        raise InvalidChange(f"{name}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return parse_price_table(text, as_json=Path(path).suffix.lower() == ".json")
    except InvalidChange as exc:
        raise InvalidChange(f"{name}: {exc}") from None


class PriceEditor:
    """The price table in Redis, over a synchronous client (the CLI's, the admin API's)."""

    def __init__(self, client: SyncClient, actor: str | None = None) -> None:
        self.client = client
        self._replace = client.register_script(_REPLACE)
        self.audit = Audit(client)
        self.actor = actor or local_actor()

    def _publish(self) -> None:
        self.client.publish(EVENTS_CHANNEL, PRICES_CHANGED)

    @staticmethod
    def _read(pattern: str, text: str) -> Price:
        try:
            return price_from_json(text)
        except InvalidChange as exc:
            raise KeyringError(
                f"the stored price for {pattern!r} is unreadable ({exc}); set it again or remove it"
            ) from None

    def prices(self) -> dict[str, Price]:
        """The whole table, sorted by pattern."""
        raw = cast(dict[str, str], self.client.hgetall(PRICES_KEY))
        return {pattern: self._read(pattern, raw[pattern]) for pattern in sorted(raw)}

    def get(self, pattern: str) -> Price:
        check_pattern(pattern)
        text = self.client.hget(PRICES_KEY, pattern)
        if text is None:
            raise UnknownPrice(pattern)
        return self._read(pattern, str(text))

    def set(self, pattern: str, fields: Mapping[str, object]) -> Price:
        """Set (or replace, whole) the price of one pattern."""
        check_pattern(pattern)
        price = price_from_fields(fields)
        self.client.hset(PRICES_KEY, pattern, price.to_json())
        self._publish()
        self.audit.record(self.actor, "price.set", pattern, asdict(price))
        return price

    def remove(self, pattern: str) -> None:
        check_pattern(pattern)
        if not self.client.hdel(PRICES_KEY, pattern):
            raise UnknownPrice(pattern)
        self._publish()
        self.audit.record(self.actor, "price.remove", pattern, {})

    def import_table(self, table: Mapping[str, Price], merge: bool = False) -> list[str]:
        """Write a validated table in one atomic step; answer with the patterns removed.

        Replaces the whole table, or with ``merge`` sets the file's patterns and keeps
        the others (then nothing is removed).
        """
        if not table:
            raise InvalidChange("no prices to import")
        for pattern in table:
            check_pattern(pattern)
        if merge:
            mapping = {pattern: price.to_json() for pattern, price in table.items()}
            self.client.hset(PRICES_KEY, mapping=mapping)  # type: ignore[arg-type]
            removed: list[str] = []
        else:
            args = [item for pattern, price in table.items() for item in (pattern, price.to_json())]
            old = cast(list[str], self._replace(keys=[PRICES_KEY], args=args))
            removed = sorted(set(old) - set(table))
        self._publish()
        self.audit.record(
            self.actor,
            "price.import",
            "prices",  # the whole table
            {"imported": sorted(table), "removed": removed, "merge": merge},
        )
        return removed

    def import_file(self, path: str, merge: bool = False) -> tuple[dict[str, Price], list[str]]:
        """Read, validate, then import a price file; nothing changes on any bad entry."""
        table = read_price_file(path)
        return table, self.import_table(table, merge=merge)


__all__ = [
    "PriceEditor",
    "fields_from_text",
    "parse_price_table",
    "price_info",
    "read_price_file",
]
