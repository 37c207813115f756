"""Check answers against the node's OpenAPI document, by path, method, status and media type."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema

OPENAPI: dict[str, Any] = json.loads(
    resources.files("cairn.status").joinpath("openapi.json").read_text()
)
SSE = "text/event-stream"
JSON = "application/json"
# A tool as agents declare one, for requests that exercise tool calling.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            # An enum: a random-weight model's call then always ends within a few tokens.
            "properties": {"city": {"enum": ["Oslo", "Bergen"]}},
            "required": ["city"],
        },
    },
}


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A response or schema object, its document-local $ref followed."""
    while "$ref" in node and len(node) == 1:
        target: Any = OPENAPI
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _validate(schema: dict[str, Any], doc: Any) -> None:
    """Validate with JSON Schema 2020-12 (OpenAPI 3.1's dialect), refs into the document."""
    jsonschema.Draft202012Validator({**schema, "components": OPENAPI["components"]}).validate(doc)


def response_schema(path: str, method: str, status: int, media: str = JSON) -> dict[str, Any]:
    """The schema the document gives for that answer (the status's, else the default's)."""
    responses = OPENAPI["paths"][path][method.lower()]["responses"]
    response = _resolve(responses.get(str(status)) or responses["default"])
    schema: dict[str, Any] = response["content"][media]["schema"]
    return schema


def check_response(path: str, method: str, status: int, doc: Any, media: str = JSON) -> None:
    """Fail unless `doc` (a parsed JSON answer, or one event of a stream) fits the document."""
    _validate(response_schema(path, method, status, media), doc)


def check_request(path: str, doc: Any) -> None:
    """Fail unless `doc` is a request body the document accepts on POST `path`."""
    body = OPENAPI["paths"][path]["post"]["requestBody"]["content"][JSON]["schema"]
    _validate(body, doc)


def events(body: bytes) -> list[Any]:
    """The `data:` payloads of an event stream, JSON decoded, up to its `[DONE]` (required).

    Comment lines (`: waking ...`) are skipped; anything after `[DONE]` fails.
    """
    out: list[Any] = []
    done = False
    for block in body.decode().split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if not lines:
            continue
        assert not done, f"an event after [DONE]: {block!r}"
        assert len(lines) == 1 and lines[0].startswith("data: "), block
        data = lines[0].removeprefix("data: ")
        if data == "[DONE]":
            done = True
        else:
            out.append(json.loads(data))
    assert done, f"the stream did not end with data: [DONE]: {body[-300:]!r}"
    return out


def check_stream(path: str, body: bytes, status: int = 200) -> list[Any]:
    """Check every event of a whole event-stream body against the document; the events."""
    docs = events(body)
    for doc in docs:
        check_response(path, "post", status, doc, SSE)
    return docs
