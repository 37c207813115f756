"""Who may use the API: this machine, the operator's bearer token, peers' signed hops."""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from cairn.errors import ConfigError
from cairn.gossip.keyring import PEER_SCHEME, Dropped, Keyring, ReplayGuard
from cairn.inference import openai
from cairn.inference.front import FORWARDED_BY

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


def _refuse(
    request: web.Request,
    status: int,
    message: str,
    code: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in the shape of the path's API: OpenAI's under /v1, the status API's elsewhere."""
    if request.path.startswith("/v1/"):
        return openai.error(status, message, "invalid_request_error", code=code, headers=headers)
    return web.json_response(
        {"error": {"status": status, "message": message}}, status=status, headers=headers
    )


def _unauthorized(request: web.Request, message: str) -> web.Response:
    return _refuse(request, 401, message, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def middleware(
    tokens: Callable[[], list[str]], peers: Callable[[], Keyring | None] = lambda: None
) -> Middleware:
    """Require a credential from the network; this machine is trusted.

    Loopback clients are let through with or without a token (local tools, and OpenAI clients
    that always send some key). Everyone else sends `Authorization: Bearer <token>`, or is a
    peer passing on a /v1 request, signed for that one request with a key derived from the
    gossip key. `tokens` and `peers` are read per request, so a rotated token or key counts at
    once.
    """
    seen = ReplayGuard()  # signed nonces inside the window: a captured hop is good once

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if loopback(request):
            return await handler(request)
        header = request.headers.get(hdrs.AUTHORIZATION)
        scheme, _, given = (header or "").partition(" ")
        given = given.strip()
        if scheme.lower() == PEER_SCHEME.lower():
            why = _peer_refusal(request, given, peers(), seen)
            if why is None:
                return await handler(request)
            return _unauthorized(request, f"peer signature refused: {why}")
        raw = given.encode(errors="surrogateescape")  # a header may carry undecodable bytes
        if scheme.lower() == "bearer" and any(
            hmac.compare_digest(raw, t.encode()) for t in tokens()
        ):
            return await handler(request)
        why = "missing bearer token" if header is None else "invalid bearer token"
        return _unauthorized(
            request, f"{why}: send 'Authorization: Bearer <token>' (api.token_file on the node)"
        )

    return require_token


def _peer_refusal(
    request: web.Request, credentials: str, keyring: Keyring | None, seen: ReplayGuard
) -> str | None:
    """Why a peer's signed hop is refused, or None: only a forwarded POST under /v1/ counts."""
    sender = request.headers.get(FORWARDED_BY)
    if keyring is None:
        return "this node has no gossip key"
    if sender is None or request.method != "POST" or not request.path.startswith("/v1/"):
        return f"good only for a forwarded POST /v1/... (with {FORWARDED_BY})"
    try:
        keyring.check_request(
            credentials, request.method, request.path_qs, sender, time.time(), seen
        )
    except Dropped as err:
        return err.reason
    return None
