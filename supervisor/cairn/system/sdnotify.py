"""systemd service notification: readiness, status text and the watchdog keep-alive."""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages when NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.watchdog_usec = _watchdog_usec(env)

    def send(self, message: str) -> None:
        """Send one notification, e.g. 'READY=1' or several lines at once."""
        if not self.enabled:
            return
        from systemd import daemon  # imported lazily: only needed under systemd

        if not daemon.notify(message):
            log.warning("sd_notify failed for %r", message.split("=", 1)[0])

    async def watchdog(self) -> None:
        """Ping the watchdog from the event loop at half its timeout, until cancelled.

        Running on the loop is the point: a blocked loop stops the pings and systemd
        restarts us.
        """
        if not (self.enabled and self.watchdog_usec):
            return
        interval = self.watchdog_usec / 2 / 1_000_000
        log.info("watchdog enabled: pinging every %.3f s", interval)
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)


def _watchdog_usec(env: dict[str, str] | os._Environ[str]) -> int:
    """WATCHDOG_USEC if it is meant for this process (WATCHDOG_PID unset or ours), else 0."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return 0
    return max(usec, 0)
