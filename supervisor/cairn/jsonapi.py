"""JSON answers in the status API's shape: the status app, the API's door, the operator socket."""

from __future__ import annotations

import msgspec
from aiohttp import web


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """`data` as JSON (msgspec: structs and plain values alike)."""
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The one error shape outside /v1: {"error": {"status", "message"}}."""
    return json_response({"error": {"status": status, "message": message}}, status, headers)
