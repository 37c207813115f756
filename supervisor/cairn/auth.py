"""Bearer tokens on the API: the operator's token, and the one peers derive from the gossip key."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from cairn.errors import ConfigError
from cairn.inference import openai

OPEN_PATHS = frozenset({"/livez", "/readyz"})  # probes from load balancers and systemd


def read_token(path: str) -> str:
    """The token in a file (surrounding whitespace dropped); refused when empty or unreadable."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("api.token_file", f"cannot read {path}: {err}") from None
    if len(token) < 16:
        raise ConfigError("api.token_file", f"{path}: the token must be at least 16 characters")
    return token


def loopback(request: web.Request) -> bool:
    """Whether the client is on this machine (loopback address, or a unix socket)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:  # a unix socket: only this machine can reach it
        return True
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


def middleware(tokens: Callable[[], list[str]]) -> Middleware:
    """Require `Authorization: Bearer <token>` from the network; this machine is trusted.

    Loopback clients are let through with or without a token (local tools, and OpenAI clients
    that always send some key). `tokens` is read per request, so a rotated key counts at once.
    """

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if loopback(request):
            return await handler(request)
        header = request.headers.get("Authorization")
        scheme, _, given = (header or "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(given.encode(), t.encode()) for t in tokens()
        ):
            why = "missing bearer token" if header is None else "invalid bearer token"
            return openai.error(
                401,
                f"{why}: send 'Authorization: Bearer <token>' (api.token_file on the node)",
                "invalid_request_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return require_token
