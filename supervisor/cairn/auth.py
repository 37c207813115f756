"""Who may use the TCP API: this machine, the operator's bearer token, peers' signed hops."""

from __future__ import annotations

import hmac
import ipaddress
import socket
import time
from collections.abc import Callable

import psutil
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from cairn import jsonapi
from cairn.errors import ConfigError
from cairn.files import read_small
from cairn.gossip.keyring import PEER_SCHEME, Dropped, Keyring, ReplayGuard
from cairn.inference import openai
from cairn.inference.front import FORWARDED_BY

OPEN_PATHS = frozenset({"/livez", "/readyz"})  # probes from load balancers and systemd
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_FILE_MAX = 4096  # a token is a line; the file need not be much more


def read_token(path: str) -> str:
    """The token in a file (surrounding whitespace dropped); refused when empty or unreadable."""
    try:  # a link is fine (systemd credentials, secret managers); a FIFO or a device is not
        token = read_small(path, TOKEN_FILE_MAX).decode("utf-8").strip()
    except (OSError, ValueError) as err:  # ValueError: not UTF-8, not a small regular file
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


def _tcp(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return isinstance(peer, tuple)


def _local_host(request: web.Request) -> bool:
    """Whether the Host header names this machine (not a name rebound to 127.0.0.1 by DNS)."""
    host = request.headers.get(hdrs.HOST)
    if host is None:  # browsers always send one
        return True
    try:
        name = (URL(f"http://{host}").host or "").lower()
    except ValueError:
        return False
    if name == "localhost" or name.endswith(".localhost") or name == socket.gethostname().lower():
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or any(
        a.address.partition("%")[0] == str(ip)
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
    )


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether a browser's Origin is this very site (scheme http, same host and port)."""
    if host is None:
        return False
    try:  # yarl decodes IDNA only when .host is read: 'http://xn--' fails there
        o, h = URL(origin), URL(f"http://{host}")
        return o.scheme == "http" and (o.host, o.port) == (h.host, h.port)
    except ValueError:  # UnicodeError included
        return False


def _shown(value: str) -> str:
    """A client's header value fit to quote back: ASCII only (undecodable bytes escaped), short."""
    return value[:100].encode("ascii", "backslashreplace").decode("ascii")


def _refuse(
    request: web.Request,
    status: int,
    message: str,
    code: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in the shape of the app the request is routed to (OpenAI's, or the status API's)."""
    if openai.serves(request):
        return openai.error(status, message, "invalid_request_error", code=code, headers=headers)
    return jsonapi.error(status, message, headers)


def _unauthorized(request: web.Request, message: str) -> web.Response:
    return _refuse(request, 401, message, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def middleware(
    tokens: Callable[[], list[str]],
    peers: Callable[[], Keyring | None] = lambda: None,
    *,
    node: str,
) -> Middleware:
    """Require a credential from the network; this machine is trusted, browsers are not.

    Loopback clients whose Host names this machine are let through with or without a token
    (local tools, and OpenAI clients that always send some key). Everyone else sends
    `Authorization: Bearer <token>`, or is a peer passing on a /v1 request, signed for that
    one request (and for this `node`) with a key derived from the gossip key. `tokens` and
    `peers` are read per request, so a rotated token or key counts at once. On TCP, a request
    from a browser on another site (a foreign Origin) is refused, and so is a state-changing
    request that is not JSON (a browser can send text/plain cross-site without asking first).
    """
    seen = ReplayGuard()  # signed nonces inside the window: a captured hop is good once

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        tcp = _tcp(request)
        origin = request.headers.get(hdrs.ORIGIN)
        if tcp and origin is not None and not _same_origin(origin, request.headers.get(hdrs.HOST)):
            return _refuse(
                request, 403, f"cross-site request from {_shown(origin)} refused", "forbidden"
            )
        if (
            tcp
            and request.method not in SAFE_METHODS
            and request.match_info.http_exception is None  # else the router's 404/405 stands
            and request.content_type != "application/json"
        ):
            return _refuse(
                request,
                415,
                f"{request.method} needs 'Content-Type: application/json',"
                f" not '{_shown(request.headers.get(hdrs.CONTENT_TYPE, ''))}'",
                "unsupported_media_type",
            )
        if loopback(request) and (not tcp or _local_host(request)):
            return await handler(request)
        header = request.headers.get(hdrs.AUTHORIZATION)
        scheme, _, given = (header or "").partition(" ")
        given = given.strip()
        if scheme.lower() == PEER_SCHEME.lower():
            why = _peer_refusal(request, given, peers(), node, seen)
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
    request: web.Request, credentials: str, keyring: Keyring | None, node: str, seen: ReplayGuard
) -> str | None:
    """Why a peer's signed hop is refused, or None: only a forwarded POST under /v1/ counts."""
    sender = request.headers.get(FORWARDED_BY)
    if keyring is None:
        return "this node has no gossip key"
    if sender is None or request.method != "POST" or not openai.serves(request):
        return f"good only for a forwarded POST /v1/... (with {FORWARDED_BY})"
    try:
        keyring.check_request(
            credentials, request.method, request.path_qs, sender, node, time.time(), seen
        )
    except Dropped as err:
        return err.reason
    return None
