"""argparse types over ``keyring.values``: the same validation, as usage errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from keyguard.errors import InvalidChange
from keyguard.keyring import values

_T = TypeVar("_T")


def _argtype(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    def convert(text: str) -> _T:
        try:
            return parse(text)
        except InvalidChange as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__  # argparse names the type in its messages
    return convert


nonneg_int = _argtype(values.nonneg_int)
pos_int = _argtype(values.pos_int)
duration = _argtype(values.duration)
models = _argtype(values.models)
allowed_ips = _argtype(values.allowed_ips)
expires = _argtype(values.expires)
env = _argtype(values.env)
owner = _argtype(values.owner)
meta_item = _argtype(values.meta_item)
grace = _argtype(values.grace)
alert_below = _argtype(values.alert_below)
