"""Guards for the daemon's listeners: connection caps per client, the fd limit, quiet logs."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import resource
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeAlias

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# An HTTP client must send a request's headers within this of connecting (or of its previous
# answer, on a kept-alive connection); aiohttp's keep-alive timer closes the connection then.
HEADER_TIMEOUT_S = 10.0
# ...and its body within this of the headers (the front reads bodies under this deadline).
BODY_TIMEOUT_S = 30.0
PER_CLIENT = 64  # open connections from one address (one user, on loopback); a peer forwards fewer
PROC_NET = Path("/proc/net")  # this network namespace's socket tables
FD_RESERVE = 256  # descriptors kept for everything else: workers' sockets, /proc, logs, gossip
LOG_EVERY_S = 60.0  # a repeated warning is written at most this often
FLOOD = "flood"  # a record's `extra` key: what counts as "the same" for RepeatFilter


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (standalone mode has no LimitNOFILE=)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, err)
            return soft
    return hard


class ConnectionLimits:
    """Open connections per client address and in all; refusals are counted by reason."""

    def __init__(self, name: str, per_client: int, total: int) -> None:
        self.name = name  # the listener, in logs and metrics
        self.per_client = per_client
        self.total = total
        self.open: collections.Counter[str] = collections.Counter()  # client -> connections
        self.open_total = 0
        self.refused: collections.Counter[str] = collections.Counter()  # reason -> count

    @classmethod
    def for_api(cls) -> ConnectionLimits:
        """The API's caps: the total leaves FD_RESERVE descriptors of the process's limit."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return cls("api", PER_CLIENT, max(PER_CLIENT, soft - FD_RESERVE))

    def admit(self, client: str, capped: bool = True) -> bool:
        """Count a new connection from `client`, or refuse it (counted, and logged quietly).

        `capped=False`: a client known to be good, held only to its own cap, not the total.
        """
        if self.open[client] >= self.per_client:
            reason = "per_client"
        elif capped and self.open_total >= self.total:
            reason = "total"
        else:
            self.open[client] += 1
            self.open_total += 1
            return True
        self.refused[reason] += 1
        log.warning(
            "%s: refused a connection from %s, over the %s cap",
            self.name,
            client,
            reason,
            extra={FLOOD: (self.name, reason)},
        )
        return False

    def release(self, client: str) -> None:
        """A connection admitted earlier has closed."""
        self.open[client] -= 1
        self.open_total -= 1
        if self.open[client] <= 0:
            del self.open[client]


_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def unmapped(ip: _IP) -> _IP:
    """An IPv4-mapped IPv6 address as the IPv4 address it is; any other unchanged."""
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def _proc_hex(ip: _IP, port: int) -> str:
    """An endpoint as /proc/net/tcp{,6} print it: the address as 32-bit words in host order."""
    words = struct.unpack(f"={len(ip.packed) // 4}I", ip.packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def socket_owner(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The uid owning this machine's TCP socket from `local` to `remote` (identd, for loopback).

    Read from the socket tables of our network namespace; None when no such socket is there,
    or its owner has closed it already. An IPv4 client may hold an IPv4 socket or an IPv6 one
    connected to a mapped address, whichever way our listener sees it: both are looked for.
    """
    ends = [unmapped(ipaddress.ip_address(a.partition("%")[0])) for a in (local[0], remote[0])]
    wanted: list[tuple[str, _IP, _IP]] = []
    if all(isinstance(ip, ipaddress.IPv4Address) for ip in ends):
        wanted.append(("tcp", ends[0], ends[1]))
        mapped = [ipaddress.IPv6Address(f"::ffff:{ip}") for ip in ends]
        wanted.append(("tcp6", mapped[0], mapped[1]))
    else:
        wanted.append(("tcp6", ends[0], ends[1]))
    for table, client, server in wanted:
        pair = f" {_proc_hex(client, local[1])} {_proc_hex(server, remote[1])} "
        try:
            text = (PROC_NET / table).read_text()
        except OSError:  # no IPv6 in this kernel, or no /proc
            continue
        at = text.find(pair)
        if at >= 0:
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            fields = text[text.rfind("\n", 0, at) + 1 : text.find("\n", at)].split()
            # Inode 0: closed by its owner, the kernel's now; it shows uid 0, as if root's.
            return int(fields[7]) if fields[9] != "0" else None
    return None


def client_key(peer: object, ours: object) -> str:
    """Who a connection counts against: its address; on loopback, the local user behind it.

    All local users share 127.0.0.1: keyed by address, one of them could hold every slot and
    lock the others (operators' tools included) out.
    """
    if not isinstance(peer, tuple):
        return ""
    address = str(peer[0])
    try:
        loopback = unmapped(ipaddress.ip_address(address.partition("%")[0])).is_loopback
    except ValueError:
        return address
    if loopback and isinstance(ours, tuple):
        uid = socket_owner((address, int(peer[1])), (str(ours[0]), int(ours[1])))
        if uid is not None:
            return f"{address} uid {uid}"
    return address


class _Guarded(asyncio.Protocol):
    """Admits a connection under the caps, then hands it to aiohttp's handler unchanged."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limits: ConnectionLimits) -> None:
        self._factory = factory
        self._limits = limits
        self._inner: asyncio.Protocol | None = None
        self._client = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream server's
        self._client = client_key(
            transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        )
        if not self._limits.admit(self._client):
            transport.abort()  # the descriptor is free again at once
            return
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._limits.release(self._client)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite with connection caps in front of the request handler."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._limits = limits

    @property
    def name(self) -> str:
        """The site's URL, for aiohttp's logs."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        """Listen; every accepted connection passes the caps first."""
        await super().start()
        server = self._runner.server
        assert server is not None
        limits = self._limits
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(server, limits), self._host, self._port, reuse_address=True
        )


class RepeatFilter(logging.Filter):
    """One record per kind per `every` seconds; the next one says how many were held back.

    Under a flood (connections refused, accept() out of descriptors) the journal gets a line a
    minute per kind instead of one per event. The kind is the record's `extra` FLOOD key, else
    its logger and the message's first line (asyncio's messages carry a changing socket
    description on the lines after it).
    """

    def __init__(
        self, every: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self._seen: dict[object, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False while the same kind of record was let through less than `every` ago."""
        key = getattr(record, FLOOD, None) or (record.name, str(record.msg).partition("\n")[0])
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.every:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.msg} [{last[1]} more like this in {now - last[0]:.0f} s]"
        return True


# Loggers that can be flooded by clients: asyncio's accept() errors, aiohttp's per-connection
# errors, the status app's unhandled-error traces (one per request, should a request still
# find a way to a 500), and our own refusals.
QUIET_LOGGERS = ("asyncio", "aiohttp.server", "aiohttp.web", "cairn.status.app", __name__)


def quiet_floods() -> None:
    """Rate-limit the loggers a flood of connections can write to (once per process)."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter())


class ConnectionsCollector(Collector):
    """Open and refused connections of every listener, at scrape time."""

    def __init__(self, listeners: list[ConnectionLimits]) -> None:
        self.listeners = listeners

    def collect(self) -> Iterator[Metric]:
        """Open connections, and refusals by reason, per listener."""
        opened = GaugeMetricFamily(
            "cairn_connections_open", "Open inbound TCP connections.", labels=["listener"]
        )
        refused = CounterMetricFamily(
            "cairn_connections_refused",
            "Inbound connections closed at once: over a cap per client, or in all.",
            labels=["listener", "reason"],
        )
        for limits in self.listeners:
            opened.add_metric([limits.name], limits.open_total)
            for reason in ("per_client", "total"):
                refused.add_metric([limits.name, reason], limits.refused[reason])
        yield from (opened, refused)
