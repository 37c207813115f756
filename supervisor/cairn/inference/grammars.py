"""JSON schemas as llama.cpp grammars: checked against what the converter enforces, then converted.

llama-cpp-python's SchemaConverter turns a JSON schema into GBNF, but it skips keywords it does
not know (`minimum`, `format: email`, `uniqueItems`, ...) and approximates others (`oneOf` as
`anyOf`). A grammar that is looser than the schema would let the model write an answer the
schema rejects, so `check` walks the schema first and refuses, naming the keyword and its path,
everything outside the subset the converter enforces exactly (or more strictly).
"""

from __future__ import annotations

import copy
import re
from typing import Any

# Keywords that never constrain a value: allowed anywhere.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_DEFS = ("$defs", "definitions")
_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
# The string formats the converter has rules for.
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4"})
_FORMATS_ALL = _FORMATS | {"uuid5"}
# Patterns: literal characters, classes without escapes, groups, alternation, quantifiers.
# `.`, negated classes and escapes could produce a raw quote or backslash inside the JSON
# string (the converter does not escape them), so they are refused.
_PATTERN_TOKEN = re.compile(r"\[[^\]\\\"^][^\]\\\"]*\]|\{\d+(,\d*)?\}|[()|*+?]|[^\\\"\[\]{}().^$]")
# The converter's `char` admits raw control characters, which JSON strings may not hold.
_CHAR_RULE = re.compile(r"^char ::= .*$", re.M)
_JSON_CHAR = (
    r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] [0-9a-fA-F])"
)
# The converter writes a bound of n as n nested groups, and llama.cpp's grammar parser recurses
# into each: a few tens of thousands overflow a worker's stack. Bounds over this are refused.
MAX_REPEAT = 1000
_REF_DEFS = re.compile(r"^#/(\$defs|definitions)/([^/]+)$")


class SchemaError(ValueError):
    """A schema the grammar could not enforce exactly; `path` is where, dotted."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def check(schema: Any, path: str = "") -> None:
    """Raise SchemaError for the first keyword the converter would ignore or approximate."""
    try:
        _check(schema, path)
    except RecursionError:
        raise SchemaError("the schema is nested too deeply", path) from None


def _join(path: str, *keys: object) -> str:
    return ".".join([path, *map(str, keys)] if path else map(str, keys))


def _fits(value: Any, kind: Any) -> bool:
    """Whether a const/enum value has the schema's declared type."""
    if kind is None:
        return True
    match kind:
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "null":
            return value is None
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
    return False


def _count(node: dict[str, Any], key: str, path: str) -> None:
    if key not in node:
        return
    value = node[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SchemaError(f"`{key}` must be a non-negative integer", _join(path, key))
    if value > MAX_REPEAT:
        raise SchemaError(f"`{key}` over {MAX_REPEAT} is not supported", _join(path, key))


def _check(node: Any, path: str) -> None:
    if not isinstance(node, dict):
        raise SchemaError(
            "a schema must be a JSON object (boolean schemas are not supported)", path
        )
    for defs in _DEFS:
        if defs in node:
            if not isinstance(node[defs], dict):
                raise SchemaError(f"`{defs}` must be an object of schemas", _join(path, defs))
            for name, sub in node[defs].items():
                _check(sub, _join(path, defs, name))
    keys = set(node) - _ANNOTATIONS - set(_DEFS)
    allowed = _allowed(node, path)
    extra = sorted(keys - allowed)
    if extra:
        raise SchemaError(
            f"JSON Schema keyword `{extra[0]}` is not supported here: the grammar would not "
            "enforce it",
            _join(path, extra[0]),
        )


def _allowed(node: dict[str, Any], path: str) -> set[str]:
    """Check the branch the converter takes for this node; return the keywords it honours."""
    kind = node.get("type")
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise SchemaError("only local references (`#/...`) are supported", _join(path, "$ref"))
        return {"$ref"}
    if "oneOf" in node:
        raise SchemaError(
            "`oneOf` is not supported (its exactly-one rule cannot be enforced); use `anyOf`",
            _join(path, "oneOf"),
        )
    if "anyOf" in node:
        alts = node["anyOf"]
        if not isinstance(alts, list) or not alts:
            raise SchemaError("`anyOf` must be a non-empty list", _join(path, "anyOf"))
        for i, alt in enumerate(alts):
            _check(alt, _join(path, "anyOf", i))
        return {"anyOf"}
    if isinstance(kind, list):
        if not kind or any(k not in _TYPES for k in kind):
            raise SchemaError(f"`type` must list JSON types {sorted(_TYPES)}", _join(path, "type"))
        return {"type"}
    if kind is not None and kind not in _TYPES:
        raise SchemaError(f"unknown type {kind!r}", _join(path, "type"))
    if "const" in node:
        if not _fits(node["const"], kind):
            raise SchemaError("`const` does not have the schema's type", _join(path, "const"))
        return {"const", "type"}
    if "enum" in node:
        values = node["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaError("`enum` must be a non-empty list", _join(path, "enum"))
        if not all(_fits(v, kind) for v in values):
            raise SchemaError(
                "an `enum` value does not have the schema's type", _join(path, "enum")
            )
        return {"enum", "type"}
    if kind in (None, "object") and (
        "properties" in node or node.get("additionalProperties", True) is not True
    ):
        return _object(node, path)
    if kind in (None, "array") and ("items" in node or "prefixItems" in node):
        return _array(node, path)
    if kind in (None, "string") and "pattern" in node:
        _pattern(node["pattern"], _join(path, "pattern"))
        return {"type", "pattern"}
    if kind in (None, "string") and "format" in node:
        if node["format"] not in _FORMATS_ALL:
            raise SchemaError(
                f"string format {node['format']!r} is not supported (supported: "
                f"{', '.join(sorted(_FORMATS_ALL))})",
                _join(path, "format"),
            )
        return {"type", "format"}
    if kind == "string":
        _count(node, "minLength", path)
        _count(node, "maxLength", path)
        if node.get("minLength", 0) > node.get("maxLength", node.get("minLength", 0)):
            raise SchemaError("`minLength` is over `maxLength`", _join(path, "minLength"))
        return {"type", "minLength", "maxLength"}
    if kind == "object" or not node:
        return {"type", "additionalProperties"}  # any object (additionalProperties: true)
    if kind is None and set(node) - _ANNOTATIONS - set(_DEFS):
        return set()  # only keywords the converter does not know: the first is named
    if kind is None:
        raise SchemaError(
            "a schema needs a `type` (or `const`, `enum`, `anyOf`, `$ref`, `properties`, `items`)",
            path,
        )
    return {"type"}


def _object(node: dict[str, Any], path: str) -> set[str]:
    props = node.get("properties", {})
    if not isinstance(props, dict):
        raise SchemaError("`properties` must be an object", _join(path, "properties"))
    for name, sub in props.items():
        _check(sub, _join(path, "properties", name))
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError("`required` must be a list of names", _join(path, "required"))
    for name in required:
        if name not in props:
            raise SchemaError(
                f"required property {name!r} is not in `properties`", _join(path, "required")
            )
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        _check(extra, _join(path, "additionalProperties"))
    elif not isinstance(extra, bool | None):
        raise SchemaError(
            "`additionalProperties` must be a boolean or a schema",
            _join(path, "additionalProperties"),
        )
    return {"type", "properties", "required", "additionalProperties"}


def _array(node: dict[str, Any], path: str) -> set[str]:
    if "items" in node and "prefixItems" in node:
        raise SchemaError(
            "`items` next to `prefixItems` is not supported", _join(path, "prefixItems")
        )
    key = "items" if "items" in node else "prefixItems"
    items = node[key]
    if isinstance(items, list):
        if not items:
            raise SchemaError(f"`{key}` must not be empty", _join(path, key))
        for i, item in enumerate(items):
            _check(item, _join(path, key, i))
        return {"type", key}  # a tuple: exactly these items
    if not isinstance(items, dict) or not items:
        raise SchemaError(f"`{key}` must be a non-empty schema", _join(path, key))
    _check(items, _join(path, key))
    _count(node, "minItems", path)
    _count(node, "maxItems", path)
    if node.get("minItems", 0) > node.get("maxItems", node.get("minItems", 0)):
        raise SchemaError("`minItems` is over `maxItems`", _join(path, "minItems"))
    return {"type", "items", "minItems", "maxItems"}


def _pattern(pattern: Any, path: str) -> None:
    if not isinstance(pattern, str) or not (pattern.startswith("^") and pattern.endswith("$")):
        raise SchemaError("`pattern` must be anchored: start with ^ and end with $", path)
    body, at = pattern[1:-1], 0
    while at < len(body):
        m = _PATTERN_TOKEN.match(body, at)
        if m is None:
            raise SchemaError(
                f"`pattern` feature at {body[at : at + 8]!r} is not supported (use literal "
                "characters, [classes] without escapes or ^, groups, |, *, +, ?, {n,m})",
                path,
            )
        if body.startswith("(?", at):
            raise SchemaError("`pattern` groups with (? are not supported", path)
        if m[0].startswith("{") and max(map(int, re.findall(r"\d+", m[0]))) > MAX_REPEAT:
            raise SchemaError(f"`pattern` repetitions over {MAX_REPEAT} are not supported", path)
        at = m.end()


class Builder:
    """One grammar assembled from checked schemas: each `add` gives a rule name to refer to."""

    def __init__(self, prop_order: list[str] | None = None) -> None:
        # Imported here: a worker loads llama_cpp only after setting its OpenMP environment.
        from llama_cpp.llama_grammar import SchemaConverter

        order = {name: i for i, name in enumerate(prop_order or [])}
        self._conv = SchemaConverter(  # type: ignore[no-untyped-call]
            prop_order=order, allow_fetch=False, dotall=False, raw_pattern=False
        )
        self._n = 0
        self._rules: list[str] = []

    def own(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A copy of a (checked) schema with its local refs resolved for this grammar alone.

        The copy is for add(), or to embed in a larger schema (a tool's parameters in its call).
        """
        self._n += 1
        tag = f"s{self._n}"
        try:
            return dict(self._conv.resolve_refs(_own_defs(copy.deepcopy(schema), tag), tag))
        except (AssertionError, KeyError, ValueError, TypeError, RecursionError) as err:
            raise SchemaError(f"the schema cannot be turned into a grammar: {err}", "") from None

    def add(self, schema: dict[str, Any], name: str) -> str:
        """Convert a (checked) schema under the rule `name` ("" for root)."""
        resolved = self.own(schema)
        try:
            return str(self._conv.visit(resolved, name))  # type: ignore[no-untyped-call]
        except (AssertionError, KeyError, IndexError, ValueError, TypeError, RecursionError) as err:
            # What check() let through but the converter still cannot take, e.g. a ref into
            # the middle of another definition.
            raise SchemaError(f"the schema cannot be turned into a grammar: {err}", "") from None

    def rule(self, line: str) -> None:
        """A hand-written rule that wraps converted ones (e.g. a tool call's tags)."""
        self._rules.append(line)

    def text(self) -> str:
        """The GBNF: the converter's rules, with a `char` that keeps JSON strings valid."""
        converted = self._conv.format_grammar()  # type: ignore[no-untyped-call]
        rules = _CHAR_RULE.sub(lambda _: _JSON_CHAR, converted)
        return "\n".join([rules, *self._rules]) + "\n"


def _own_defs(schema: Any, prefix: str) -> Any:
    """Prefix `$defs` names and the refs to them, so two schemas' defs never share a rule."""
    if isinstance(schema, list):
        return [_own_defs(x, prefix) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DEFS and isinstance(value, dict):
            out[key] = {f"{prefix}-{k}": _own_defs(v, prefix) for k, v in value.items()}
        elif key == "$ref" and isinstance(value, str) and (m := _REF_DEFS.match(value)):
            out[key] = f"#/{m[1]}/{prefix}-{m[2]}"
        else:
            out[key] = _own_defs(value, prefix)
    return out


def schema_grammar(schema: dict[str, Any]) -> str:
    """A grammar for one JSON value valid under a (checked) schema."""
    b = Builder()
    b.add(schema, "")
    return b.text()


def json_object_grammar() -> str:
    """A grammar for any JSON object (response_format json_object)."""
    return schema_grammar({"type": "object"})
