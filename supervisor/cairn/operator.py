"""Operator actions (confirm, roll back) over a unix socket that names its caller.

The TCP API is for reading and for inference: anyone on loopback can reach it (other users,
sleepable services, a web page in a browser on the node), so it changes nothing about the node.
Confirming or rolling back a generation goes through `<state_dir>/operator.sock` instead:
the file is the daemon user's, mode 0600, in a state directory only that user may enter, and
each connection's peer credentials (`SO_PEERCRED`, from the kernel) must name root or the
daemon's own user. `cairn confirm` and `cairn rollback` are its client.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import struct
from collections import Counter
from pathlib import Path
from typing import Annotated

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from cairn import jsonapi
from cairn.policy.gate import Gate, GateError

log = logging.getLogger(__name__)

JSON = "application/json"
GATE: web.AppKey[Gate] = web.AppKey("gate", Gate)
REFUSED: web.AppKey[Counter[str]] = web.AppKey("refused", Counter)


class RollbackRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of POST /generations/rollback."""

    to: Annotated[int, msgspec.Meta(ge=1)] | None = None


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of the unix socket, from the kernel."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def allowed_uids() -> frozenset[int]:
    """Root and the daemon's own user: the operators of this node."""
    return frozenset({0, os.getuid()})


@web.middleware
async def operators_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse callers that are not operators, and bodies that are not JSON."""
    refused = request.app[REFUSED]
    uid = peer_uid(request)
    if uid is None or uid not in allowed_uids():
        refused["uid"] += 1
        log.warning("operator socket: refused a caller with uid %s", uid)
        return jsonapi.error(
            403, f"uid {uid} is not an operator of this node (root or the daemon's user)"
        )
    if request.method == "POST" and request.content_type != JSON:
        refused["content-type"] += 1
        return jsonapi.error(415, f"send the body as {JSON}")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return jsonapi.error(exc.status, exc.reason)


async def confirm(request: web.Request) -> web.Response:
    """Confirm the running generation by hand."""
    try:
        number = await request.app[GATE].confirm()
    except GateError as err:
        return jsonapi.error(409, str(err))
    return jsonapi.json_response({"confirmed": number})


async def rollback(request: web.Request) -> web.Response:
    """Roll back to a generation by hand: body {"to": N}, or {} for the newest confirmed."""
    try:
        body = msgspec.json.decode(await request.read() or b"{}", type=RollbackRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        return jsonapi.error(400, f'expected {{"to": N}} or {{}}: {err}')
    try:
        target = await request.app[GATE].roll_back(body.to)
    except GateError as err:
        return jsonapi.error(409, str(err))
    return jsonapi.json_response({"target": target}, 202)


def create_app(gate: Gate) -> web.Application:
    """The operator app: the generation gate's two actions."""
    app = web.Application(middlewares=[operators_only], client_max_size=4096)
    app[GATE] = gate
    app[REFUSED] = Counter()
    app.router.add_post("/generations/confirm", confirm)
    app.router.add_post("/generations/rollback", rollback)
    return app


async def serve(runner: web.AppRunner, path: Path) -> web.UnixSite:
    """Listen on `path`, replacing a stale socket, readable and writable by its owner only."""
    path.unlink(missing_ok=True)
    site = web.UnixSite(runner, str(path))
    umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
    try:
        await site.start()
    finally:
        os.umask(umask)
    return site


# --- the client: `cairn confirm`, `cairn rollback` -----------------------------------------


class OperatorError(Exception):
    """The node could not be reached through its operator socket."""


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: http.client with its connect() pointed at a path."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("cairn", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(path: Path, action: str, body: dict[str, object], timeout: float) -> tuple[int, object]:
    """POST `body` to /generations/`action` on the socket at `path`; (status, decoded answer)."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("POST", f"/generations/{action}", json.dumps(body), {"Content-Type": JSON})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    except OSError as err:
        raise OperatorError(f"cannot reach {path}: {err}") from None
    except (http.client.HTTPException, ValueError) as err:
        raise OperatorError(f"{path}: not an answer from a cairn node: {err}") from None
    finally:
        conn.close()
