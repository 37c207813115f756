"""Where a msgspec validation error points: the dotted field path, and the problem alone."""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

import msgspec

# msgspec reports e.g. "Expected `int`, got `str` - at `$.api.port`" or
# "Object contains unknown field `prot` - at `$.api`".
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_KEY = re.compile(r"^Object (?P<kind>contains unknown|missing required) field `(?P<key>[^`]+)`$")


class Located(NamedTuple):
    """A validation error split up: `path` is dotted ("models.0.path"; "" for the root)."""

    path: str
    message: str
    key: Literal["unknown", "missing"] | None  # set when the error is about a key itself


def locate(err: msgspec.ValidationError) -> Located:
    """Split msgspec's message; for an unknown or missing key the path ends at that key."""
    m = _AT.match(str(err))
    assert m is not None  # the pattern matches any string
    msg = m["msg"]
    path = re.sub(r"\[(\d+)\]", r".\1", m["path"] or "").lstrip(".")
    if km := _KEY.match(msg):
        full = ".".join(p for p in (path, km["key"]) if p)
        return Located(full, msg, "unknown" if km["kind"] == "contains unknown" else "missing")
    return Located(path, msg, None)
